//! The README's "Your model and your data" program is `examples/own_model.rs` (which CI
//! compiles), line for line, and at most 50 lines.

#[test]
fn the_readme_program_is_the_own_model_example() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let example = std::fs::read_to_string(format!("{root}/examples/own_model.rs")).unwrap();
    let program = example
        .split_once("mod program {\n")
        .and_then(|(_, rest)| rest.rsplit_once("\n}\n\nfn main()"))
        .map(|(body, _)| body.trim_matches('\n'))
        .expect("examples/own_model.rs keeps its program in `mod program`");
    let section = readme
        .split_once("## Your model and your data")
        .expect("the README's section")
        .1;
    let block = section
        .split_once("```rust\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("the section's rust block")
        .0;
    assert_eq!(block, program, "README and examples/own_model.rs differ");
    let lines = program.lines().count();
    assert!(lines <= 50, "{lines} lines");
    assert!(
        section.contains(&format!("{lines} lines:")),
        "the README counts {lines} lines"
    );
}
