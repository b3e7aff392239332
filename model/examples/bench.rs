//! `cargo run -p model --release --example bench -- [config] [batch] [text_len] [steps]`:
//! prints the bench report as one JSON line (the same as `paliforge model bench`).

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let cfg = model::PaliGemmaConfig::preset(a.first().map(String::as_str).unwrap_or("small"))
        .expect("config");
    let n = |i: usize, d: usize| a.get(i).map(|s| s.parse().expect("number")).unwrap_or(d);
    let r = model::bench(&cfg, n(1, 4), n(2, 64), n(3, 10)).expect("bench");
    println!("{}", serde_json::to_string(&r).unwrap());
}
