//! The tokenizer: a Hugging Face `tokenizer.json` with PaliGemma's special tokens resolved once,
//! and a trainer for users who have no tokenizer of their own.
//!
//! `<image>`, `<bos>`, `<eos>`, `<pad>` and "\n" are required. The `<loc>` and `<seg>` tokens are
//! optional, all of a kind or none: a small model's vocabulary (the oracle's 300 ids) cannot hold
//! 1,152 of them, and only boxes and masks need them; whatever would render or read them asks
//! for them with [`PaliTokenizer::require`] or [`PaliTokenizer::check_text`].

use std::collections::HashSet;
use std::path::Path;

use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// Number of `<locNNNN>` tokens (box coordinate bins).
pub const LOC_TOKENS: usize = 1024;
/// Number of `<segNNN>` tokens (mask codes).
pub const SEG_TOKENS: usize = 128;

pub fn loc_token(bin: usize) -> String {
    TokenFamily::Loc.token(bin)
}

pub fn seg_token(code: usize) -> String {
    TokenFamily::Seg.token(code)
}

/// PaliGemma's numbered tokens: a tokenizer has all of a family or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFamily {
    /// `<loc0000>`..`<loc1023>`: box and point coordinates.
    Loc,
    /// `<seg000>`..`<seg127>`: mask codes.
    Seg,
}

impl TokenFamily {
    fn prefix(self) -> &'static str {
        match self {
            TokenFamily::Loc => "<loc",
            TokenFamily::Seg => "<seg",
        }
    }

    fn digits(self) -> usize {
        match self {
            TokenFamily::Loc => 4,
            TokenFamily::Seg => 3,
        }
    }

    pub fn count(self) -> usize {
        match self {
            TokenFamily::Loc => LOC_TOKENS,
            TokenFamily::Seg => SEG_TOKENS,
        }
    }

    pub fn token(self, i: usize) -> String {
        format!("{}{i:0width$}>", self.prefix(), width = self.digits())
    }

    /// The family's token at the start of `s`: its number and what follows.
    pub fn parse_at(self, s: &str) -> Option<(usize, &str)> {
        let tail = s.strip_prefix(self.prefix())?;
        let digits = tail.get(..self.digits())?;
        let rest = tail[self.digits()..].strip_prefix('>')?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let i: usize = digits.parse().ok()?;
        (i < self.count()).then_some((i, rest))
    }

    /// The first of the family's tokens written in `text`.
    pub fn find_in(self, text: &str) -> Option<String> {
        text.match_indices(self.prefix())
            .find_map(|(at, _)| self.parse_at(&text[at..]))
            .map(|(i, _)| self.token(i))
    }
}

impl std::fmt::Display for TokenFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.token(0), self.token(self.count() - 1))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: String, message: String },
    #[error(
        "tokenizer {tokenizer} has no {token:?} token; PaliGemma needs <image>, <bos>, <eos> and \
         <pad>, and <loc0000>..<loc1023> and <seg000>..<seg127> for boxes and masks \
         (scripts/make_gemma_tokenizer.sh builds Gemma's)"
    )]
    MissingToken { tokenizer: String, token: String },
    #[error(
        "tokenizer {tokenizer} has {present} of the {family} tokens but not {missing}: a tokenizer \
         has all of them or none"
    )]
    PartialFamily {
        tokenizer: String,
        family: TokenFamily,
        present: usize,
        missing: String,
    },
    #[error(
        "tokenizer {tokenizer} has no {family} tokens, but {needed_by}; use a tokenizer with \
         PaliGemma's tokens (Gemma's, or `paliforge prepare --train-tokenizer`)"
    )]
    NoFamily {
        tokenizer: String,
        family: TokenFamily,
        needed_by: String,
    },
    #[error(
        "tokenizer {tokenizer}: {text:?} encodes to {ids:?}, expected the single id {expected:?}"
    )]
    NotSingleToken {
        tokenizer: String,
        text: String,
        ids: Vec<u32>,
        expected: Vec<u32>,
    },
    #[error("tokenizer: {0}")]
    Tokenizers(String),
    #[error(
        "no tokenizer given and no tokenizer.json beside the spec or the data; `paliforge demo-data` \
         writes one, and `paliforge prepare --train-tokenizer` makes one for any dataset"
    )]
    NotFound,
}

fn tokenizers_error(e: tokenizers::Error) -> TokenizerError {
    TokenizerError::Tokenizers(e.to_string())
}

/// The ids the token layout of an example needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub image: u32,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    /// The separator between prefix and suffix: what "\n" encodes to.
    pub sep: u32,
}

/// A `tokenizers::Tokenizer` known to hold every PaliGemma token it has as a single token.
#[derive(Debug, Clone)]
pub struct PaliTokenizer {
    inner: Tokenizer,
    /// Its file, for errors.
    name: String,
    special: SpecialIds,
    loc: Option<Vec<u32>>,
    seg: Option<Vec<u32>>,
    /// One past the largest id.
    id_bound: usize,
}

impl PaliTokenizer {
    /// Loads a `tokenizer.json`; every error names the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let inner = crate::tokenizer_file::read_tokenizer(path)?;
        Self::resolve(inner, name)
    }

    /// Wraps a tokenizer built in memory (e.g. by [`train_tokenizer`]).
    pub fn new(inner: Tokenizer) -> Result<Self, TokenizerError> {
        Self::resolve(inner, "(in memory)".to_string())
    }

    fn resolve(inner: Tokenizer, name: String) -> Result<Self, TokenizerError> {
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| TokenizerError::MissingToken {
                    tokenizer: name.clone(),
                    token: token.to_string(),
                })
        };
        let family = |family: TokenFamily| {
            let ids: Vec<Option<u32>> = (0..family.count())
                .map(|i| inner.token_to_id(&family.token(i)))
                .collect();
            let present = ids.iter().flatten().count();
            match ids.iter().position(Option::is_none) {
                None => Ok(Some(ids.into_iter().flatten().collect::<Vec<_>>())),
                Some(_) if present == 0 => Ok(None),
                Some(missing) => Err(TokenizerError::PartialFamily {
                    tokenizer: name.clone(),
                    family,
                    present,
                    missing: family.token(missing),
                }),
            }
        };
        let (loc, seg) = (family(TokenFamily::Loc)?, family(TokenFamily::Seg)?);
        let (image, bos, eos, pad) = (id("<image>")?, id("<bos>")?, id("<eos>")?, id("<pad>")?);

        // The separator is resolved by encoding, not by name: byte-level vocabularies spell "\n"
        // as "Ċ", Gemma's as "\n"; either way it must be one token.
        let encode = |text: &str| inner.encode_fast(text, false).map(|e| e.get_ids().to_vec());
        let sep_ids = encode("\n").map_err(tokenizers_error)?;
        let &[sep] = sep_ids.as_slice() else {
            return Err(TokenizerError::NotSingleToken {
                tokenizer: name,
                text: "\n".into(),
                ids: sep_ids,
                expected: vec![],
            });
        };

        // Being in the vocabulary is not enough: a token that is not an added token (or one the
        // normalizer rewrites) gets split by the model. Check that each one's text round-trips.
        let named = [
            ("<image>", image),
            ("<bos>", bos),
            ("<eos>", eos),
            ("<pad>", pad),
        ]
        .map(|(t, id)| (t.to_string(), id));
        let locs = loc.iter().flatten().enumerate();
        let locs = locs.map(|(i, &id)| (loc_token(i), id));
        let segs = seg.iter().flatten().enumerate();
        let segs = segs.map(|(i, &id)| (seg_token(i), id));
        for (text, expected) in named.into_iter().chain(locs).chain(segs) {
            let ids = encode(&text).map_err(tokenizers_error)?;
            if ids != [expected] {
                return Err(TokenizerError::NotSingleToken {
                    tokenizer: name,
                    text,
                    ids,
                    expected: vec![expected],
                });
            }
        }

        let id_bound = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&max| max as usize + 1);
        Ok(Self {
            inner,
            name,
            id_bound,
            special: SpecialIds {
                image,
                bos,
                eos,
                pad,
                sep,
            },
            loc,
            seg,
        })
    }

    pub fn special(&self) -> SpecialIds {
        self.special
    }

    /// The file it was loaded from, or "(in memory)".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ids of `<loc0000>`..`<loc1023>`, indexed by bin, if it has them.
    pub fn loc_ids(&self) -> Option<&[u32]> {
        self.family_ids(TokenFamily::Loc)
    }

    /// Ids of `<seg000>`..`<seg127>`, indexed by code, if it has them.
    pub fn seg_ids(&self) -> Option<&[u32]> {
        self.family_ids(TokenFamily::Seg)
    }

    /// The ids of `family`, if it has them.
    pub fn family_ids(&self, family: TokenFamily) -> Option<&[u32]> {
        match family {
            TokenFamily::Loc => self.loc.as_deref(),
            TokenFamily::Seg => self.seg.as_deref(),
        }
    }

    /// The ids of `family`, or an error naming this tokenizer and saying what needs them
    /// (`needed_by`, a clause: "the text has <loc0100>").
    pub fn require(&self, family: TokenFamily, needed_by: &str) -> Result<&[u32], TokenizerError> {
        self.family_ids(family)
            .ok_or_else(|| TokenizerError::NoFamily {
                tokenizer: self.name.clone(),
                family,
                needed_by: needed_by.to_string(),
            })
    }

    /// Checks that `text` writes no `<loc>` or `<seg>` token this tokenizer lacks: it would be
    /// split into pieces (or `<unk>`) and train on garbage. Free when it has both families.
    pub fn check_text(&self, text: &str) -> Result<(), TokenizerError> {
        for family in [TokenFamily::Loc, TokenFamily::Seg] {
            if self.family_ids(family).is_none()
                && let Some(token) = family.find_in(text)
            {
                self.require(family, &format!("the text has {token}"))?;
            }
        }
        Ok(())
    }

    /// Ids run from 0 to `vocab_size() - 1` (one past the largest id, gaps included): a model
    /// needs this many embeddings.
    pub fn vocab_size(&self) -> usize {
        self.id_bound
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Token ids of `text`, without special tokens around it (the layout adds its own).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(tokenizers_error)?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, TokenizerError> {
        let encodings = self
            .inner
            .encode_batch_fast(texts.to_vec(), false)
            .map_err(tokenizers_error)?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Text of `ids`, special tokens included (so loc tokens and `<eos>` stay visible).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, false).map_err(tokenizers_error)
    }
}

/// Adds the tokens PaliGemma appends to Gemma's vocabulary, in Gemma's order: `<loc0000>`..
/// `<loc1023>`, `<seg000>`..`<seg127>`, then `<image>` (special). Not normalised, so no normalizer
/// can split them.
pub fn add_paligemma_tokens(tokenizer: &mut Tokenizer) -> Result<(), TokenizerError> {
    let plain = |content: String| AddedToken::from(content, false).normalized(false);
    tokenizer
        .add_tokens((0..LOC_TOKENS).map(|i| plain(loc_token(i))))
        .map_err(tokenizers_error)?;
    tokenizer
        .add_tokens((0..SEG_TOKENS).map(|i| plain(seg_token(i))))
        .map_err(tokenizers_error)?;
    tokenizer
        .add_special_tokens([AddedToken::from("<image>", true).normalized(false)])
        .map_err(tokenizers_error)?;
    Ok(())
}

/// Trains a byte-level BPE tokenizer on `texts`, for datasets without a tokenizer of their own.
///
/// Ids follow Gemma where it matters: `<pad>` 0, `<eos>` 1, `<bos>` 2; then the BPE vocabulary
/// (`vocab_size` ids in all, the three included); then `<loc>`, `<seg>` and `<image>` as
/// [`add_paligemma_tokens`] adds them. Byte-level, so any text encodes without an unknown token
/// and decodes back exactly; "\n" is one byte, hence one token. Save it with
/// `Tokenizer::save(path, false)` as a `tokenizer.json`.
pub fn train_tokenizer<'a>(
    texts: impl Iterator<Item = &'a str> + Send,
    vocab_size: usize,
) -> Result<Tokenizer, TokenizerError> {
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer
        .with_pre_tokenizer(Some(ByteLevel::new(false, false, true)))
        .with_decoder(Some(ByteLevel::default()));
    let specials = ["<pad>", "<eos>", "<bos>"].map(|t| AddedToken::from(t, true));
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials.to_vec())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect::<HashSet<_>>())
        .build()
        .into();
    tokenizer
        .train(&mut trainer, texts)
        .map_err(tokenizers_error)?;
    add_paligemma_tokens(&mut tokenizer)?;
    Ok(tokenizer)
}
