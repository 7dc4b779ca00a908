//! Trains a byte-level BPE tokenizer on the embedded Shakespeare training split and times
//! training and encoding.
//!
//! ```text
//! cargo run --release --example bench_tokenizer                      # vocab 1024
//! cargo run --release --example bench_tokenizer -- 4096 tok.json     # vocab 4096, save it
//! ```
//!
//! Checks on the way: decoding gives each split back exactly, and the chunked parallel
//! `encode` gives the same ids as one `tokenizers` call on the whole text.

use std::time::Instant;

use umup::data::{Corpus, Split};
use umup::tokenizer::BpeTokenizer;

fn main() -> umup::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let vocab: usize = match args.first() {
        Some(v) => v
            .parse()
            .map_err(|_| umup::Error::Invalid(format!("vocab `{v}` is not a number")))?,
        None => 1024,
    };
    let corpus = Corpus::shakespeare(0.1)?;
    let train = corpus.split(Split::Train);

    let t = Instant::now();
    let tk = BpeTokenizer::train_bpe(train, vocab)?;
    println!(
        "trained {} on {} bytes in {:.2} s",
        tk.name(),
        train.len(),
        t.elapsed().as_secs_f64()
    );

    // The same tokenizer through the `tokenizers` API directly, one call on the whole text.
    let raw: tokenizers::Tokenizer = tk.to_json().parse().expect("own JSON parses");
    for split in [Split::Train, Split::Val] {
        let text = corpus.split(split);
        let t = Instant::now();
        let ids = tk.encode(text)?;
        let chunked = t.elapsed().as_secs_f64();
        let whole = std::str::from_utf8(text).expect("the corpus is UTF-8");
        let t = Instant::now();
        let one = raw.encode_fast(whole, false).expect("encode");
        let single = t.elapsed().as_secs_f64();
        assert_eq!(one.get_ids(), &ids[..], "chunked encoding differs");
        assert_eq!(tk.decode(&ids).as_bytes(), text, "round trip");
        println!(
            "{split:?}: {} bytes -> {} tokens, {:.3} bytes/token; encode {:.2} s \
             ({:.1} MB/s; one call on the whole text {:.2} s)",
            text.len(),
            ids.len(),
            text.len() as f64 / ids.len() as f64,
            chunked,
            text.len() as f64 / chunked / 1e6,
            single
        );
    }
    if let Some(path) = args.get(1) {
        tk.save(path)?;
        println!("saved {path}");
    }
    Ok(())
}
