use umup::umup_model;

#[umup_model]
pub struct Mlp<const D: usize, const L: usize> {
    #[embedding]
    embed: Embedding<8, D>,
    #[output]
    readout: Linear<D, 8>,
}

// `Mlp` has no `Trainable` impl.
umup::family! {
    pub struct Family = Mlp<W, L> for W in [8, 16], L in [1];
}

fn main() {}
