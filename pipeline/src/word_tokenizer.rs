//! A word-level tokenizer with a fixed id layout, for a model whose vocabulary is too small for
//! a byte-level BPE plus PaliGemma's 1,153 `<loc>`, `<seg>` and `<image>` tokens (the oracle's
//! tiny Hugging Face model has 300 ids).
//!
//! Ids: `<pad>` 0, `<eos>` 1, `<bos>` 2 (Gemma's), `<unk>` 3, "\n" 4, then the words of the
//! texts, most frequent first (ties in alphabetical order), then `<unusedN>` fillers (as Gemma
//! pads its vocabulary), and `<image>` last, at `vocab_size - 1` (the oracle's
//! `image_token_index`). Words are what Hugging Face's `Whitespace` pre-tokenizer splits (`\w+`
//! and runs of punctuation); a word outside the vocabulary encodes as `<unk>`; decoding joins
//! words with spaces. It has no `<loc>` or `<seg>` tokens: no boxes or masks with it.

use std::collections::HashMap;

use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{
    AddedToken, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, Tokenizer,
};

use crate::text::TokenizerError;

/// The fixed ids before the words.
const HEAD: [&str; 5] = ["<pad>", "<eos>", "<bos>", "<unk>", "\n"];

/// Builds the tokenizer of exactly `vocab_size` ids from the words of `texts`. Words that do not
/// fit (more than `vocab_size - 6`) are left out, the rarest first, and logged.
pub fn word_tokenizer<'a>(
    texts: impl Iterator<Item = &'a str>,
    vocab_size: usize,
) -> Result<Tokenizer, TokenizerError> {
    let room = vocab_size.checked_sub(HEAD.len() + 1).ok_or_else(|| {
        TokenizerError::Tokenizers(format!(
            "a word-level tokenizer of {vocab_size} ids has no room for a word: its layout takes \
             {} ids",
            HEAD.len() + 1
        ))
    })?;
    let mut counts: HashMap<String, u64> = HashMap::new();
    for text in texts {
        let mut split = PreTokenizedString::from(text);
        Whitespace {}
            .pre_tokenize(&mut split)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        for (word, _, _) in split.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            *counts.entry(word.to_string()).or_default() += 1;
        }
    }
    let mut words: Vec<(String, u64)> = counts.into_iter().collect();
    words.sort_by(|(a, ca), (b, cb)| cb.cmp(ca).then_with(|| a.cmp(b)));
    if words.len() > room {
        tracing::warn!(
            words = words.len(),
            kept = room,
            "the texts have more words than a word-level tokenizer of {vocab_size} ids holds: \
             the rarest will encode as <unk>"
        );
        words.truncate(room);
    }

    let fillers = (0..room - words.len()).map(|i| format!("<unused{i}>"));
    let tokens = HEAD
        .iter()
        .map(|t| t.to_string())
        .chain(words.into_iter().map(|(w, _)| w))
        .chain(fillers)
        .chain(["<image>".to_string()]);
    let vocab = tokens.enumerate().map(|(id, t)| (t, id as u32)).collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("<unk>".into())
        .build()
        .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;

    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    // Added tokens are matched before pre-tokenization: the specials stay whole, and "\n" (which
    // the pre-tokenizer would drop as whitespace) stays a token.
    let added = |content: &str, special: bool| AddedToken::from(content, special).normalized(false);
    let specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"].map(|t| added(t, true));
    let error = |e: tokenizers::Error| TokenizerError::Tokenizers(e.to_string());
    tokenizer.add_special_tokens(specials).map_err(error)?;
    tokenizer.add_tokens([added("\n", false)]).map_err(error)?;
    Ok(tokenizer)
}
