//! Runs a u-μP conformance fixture file through umup's public API in f64.
//!
//! ```text
//! cargo run --release --example conformance -- fixtures/public.json
//! ```
//!
//! Prints one line per failing case (name, worst absolute and relative error, why) and ends with
//! `N passed, M failed`. Exits with status 0 iff nothing failed.

use std::process::ExitCode;

use umup::conformance;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, verbose) = match args.as_slice() {
        [p] => (p.clone(), false),
        [flag, p] | [p, flag] if flag == "-v" || flag == "--verbose" => (p.clone(), true),
        [] => ("fixtures/public.json".to_string(), false),
        _ => {
            eprintln!("usage: conformance [-v] <fixture.json>");
            return ExitCode::from(2);
        }
    };
    let file = match conformance::load(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let results = conformance::run_file(&file);
    let mut failed = 0;
    for r in &results {
        if !r.passed {
            failed += 1;
        }
        if !r.passed || verbose {
            println!("{r}");
        }
    }
    println!("{} passed, {} failed", results.len() - failed, failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
