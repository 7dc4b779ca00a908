//! Compile-time behaviour of `#[umup_model]`: every mistake is a spanned error that says what
//! to write instead (`tests/ui/fail`, with `.stderr` snapshots), and valid models compile
//! (`tests/ui/pass`). Regenerate snapshots with `TRYBUILD=overwrite cargo test --test ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
