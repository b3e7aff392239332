//! Greedy and beam-search decoding with a KV cache.
