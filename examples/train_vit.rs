//! Train the ViT-style image classifier (`umup::models::Vit`: 2×2 patches through the input
//! projection, a learned position embedding, non-causal attention, a GELU MLP, mean pooling,
//! LayerNorm, readout) on the 8×8 handwritten digits (embedded) or your own images, with the
//! same flags, outputs and checkpoints as `train_lm`.
//!
//! ```text
//! cargo run --release --example train_vit                        # the default run
//! cargo run --release --example train_vit -- --steps 20 --out runs/vit
//! cargo run --release --example train_vit -- --data my.safetensors  # tensors images [n, 8, 8], labels [n]
//! cargo run --release --example train_vit -- --print-table
//! ```

#[macro_use]
#[path = "common/shipped.rs"]
mod shipped;
#[path = "common/train_cli.rs"]
mod train_cli;

fn main() -> std::process::ExitCode {
    train_cli::main(
        "vit",
        "Train a u-μP ViT-style classifier (default: the 8×8 handwritten digits, embedded)",
        // u-μP's default η = 1: with the mean attention scale and fixed norm parameters (the
        // defaults for non-causal attention) it is within the flat optimum (docs/results.md §9).
        train_cli::Defaults {
            width: 64,
            depth: 2,
            batch: 64,
            umup_lr: 1.0,
        },
    )
}
