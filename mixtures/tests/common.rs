// Helpers shared by the integration tests.
#![allow(dead_code)]

use mixtures::Mixture;

/// A mixture with one source per task (all named after the task), one stage per entry of
/// `stages`: (budget in examples, weights by task).
pub fn mixture(seed: u64, stages: &[(u64, &[(&str, f64)])]) -> Mixture {
    let mut names: Vec<&str> = stages
        .iter()
        .flat_map(|(_, w)| w.iter().map(|(t, _)| *t))
        .collect();
    names.sort();
    names.dedup();
    let mut toml = format!("seed = {seed}\n");
    for name in &names {
        toml += &format!(
            "[sources.{name}]\ndata = \"{name}/*.parquet\"\n\
             [tasks.{name}]\nsource = \"{name}\"\nprefix = \"caption en\"\nsuffix = \"{{caption}}\"\n"
        );
    }
    for (i, (budget, weights)) in stages.iter().enumerate() {
        let weights: Vec<String> = weights
            .iter()
            .map(|(t, w)| format!("{t} = {w:?}"))
            .collect();
        toml += &format!(
            "[[stages]]\nname = \"s{i}\"\nbatch_size = 1\nbudget = {{ examples = {budget} }}\nweights = {{ {} }}\n",
            weights.join(", ")
        );
    }
    Mixture::from_toml_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}
