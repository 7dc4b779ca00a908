//! Train the u-μP transformer language model on Shakespeare (embedded) or any file.
//!
//! ```text
//! cargo run --release --example train_lm                          # the default run
//! cargo run --release --example train_lm -- --param sp --lr 0.01 # the SP baseline
//! cargo run --release --example train_lm -- --print-table         # the per-parameter table
//! cargo run --release --example train_lm -- --help
//! ```

#[macro_use]
#[path = "common/shipped.rs"]
mod shipped;
#[path = "common/train_cli.rs"]
mod train_cli;

fn main() -> std::process::ExitCode {
    train_cli::main(
        "lm",
        "Train a byte-level u-μP transformer LM (default: Shakespeare, embedded)",
        train_cli::TEXT,
    )
}
