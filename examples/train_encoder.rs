//! Train the masked-byte encoder (`umup::models::MaskedEncoder`, BERT-style: 15% of the bytes
//! masked, the model predicts them) on Shakespeare (embedded) or any file, with the same flags,
//! outputs and checkpoints as `train_lm`.
//!
//! ```text
//! cargo run --release --example train_encoder                     # the default run
//! cargo run --release --example train_encoder -- --steps 20 --out runs/enc
//! cargo run --release --example train_encoder -- --print-table
//! ```

#[macro_use]
#[path = "common/shipped.rs"]
mod shipped;
#[path = "common/train_cli.rs"]
mod train_cli;

fn main() -> std::process::ExitCode {
    train_cli::main(
        "encoder",
        "Train a byte-level u-μP masked-byte encoder (default: Shakespeare, embedded)",
        train_cli::TEXT,
    )
}
