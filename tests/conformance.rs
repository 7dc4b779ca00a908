//! The reference library's float64 fixtures, run through umup's public API.

use umup::conformance::{self, FixtureFile};

fn public() -> FixtureFile {
    conformance::load(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/public.json")).unwrap()
}

#[test]
fn every_public_case_passes_at_its_tolerance() {
    let file = public();
    assert_eq!(file.cases.len(), 80);
    let failed: Vec<String> = conformance::run_file(&file)
        .into_iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{}: {}", r.name, r.message.unwrap_or_default()))
        .collect();
    assert!(failed.is_empty(), "failing cases:\n{}", failed.join("\n"));
}

#[test]
fn every_conv1d_case_passes_at_its_tolerance() {
    let file =
        conformance::load(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/conv1d.json")).unwrap();
    assert_eq!(file.cases.len(), 6);
    let results = conformance::run_file(&file);
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{}: {}", r.name, r.message.clone().unwrap_or_default()))
        .collect();
    assert!(failed.is_empty(), "failing cases:\n{}", failed.join("\n"));
    // A perturbed gradient fails: the runner compares every grad, not only the output.
    let mut case = file.cases[0].clone();
    let g = case.expected.grads.get_mut("weight").unwrap();
    g.data[0] += 1e-6 * (1.0 + g.data[0].abs());
    assert!(!conformance::run_case(&case).passed);
}

#[test]
fn every_op_of_the_schema_is_covered() {
    let ops: std::collections::BTreeSet<String> =
        public().cases.into_iter().map(|c| c.op).collect();
    assert_eq!(ops.len(), 23, "{ops:?}");
}

#[test]
fn the_runner_can_fail() {
    let mut file = public();
    // A perturbed expected value fails.
    let case = file.cases.iter_mut().find(|c| c.op == "linear").unwrap();
    let out = case.expected.outputs.get_mut("output").unwrap();
    out.data[0] += 1e-6 * (1.0 + out.data[0].abs());
    let r = conformance::run_case(case);
    assert!(!r.passed);
    assert!(r.worst_abs > 0.0);
    // An unknown op fails, it is never skipped.
    let mut case = file.cases[0].clone();
    case.op = "frobnicate".into();
    let r = conformance::run_case(&case);
    assert!(!r.passed);
    assert!(r.message.unwrap().contains("frobnicate"));
    // A wrong shape in a fixture is reported, not a panic.
    let mut case = file.cases[0].clone();
    case.inputs.values_mut().next().unwrap().shape.push(7);
    assert!(!conformance::run_case(&case).passed);
}
