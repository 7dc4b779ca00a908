use umup::umup_model;

#[umup_model]
pub struct Mlp<const D: usize, const L: usize> {
    #[embedding]
    embed: Embedding<8, D>,
    #[output]
    readout: Linear<D, 8>,
}

// `L` is not in the type, a width is zero, and a size is listed twice: all reported at once.
umup::family! {
    pub struct Bad = Mlp<W, 2> for (W, L) in [(0, 1), (64, 1), (64, 1)];
}

umup::family! {
    pub struct Same = Mlp<W, W> for W in [8], W in [1];
}

fn main() {}
