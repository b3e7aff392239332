//! Model dimensions: presets (`tiny`, `small`, the released `paligemma-3b-pt-*`) and
//! transformers' PaliGemma `config.json`, read and written.

use std::path::Path;

use serde_json::{Value, json};

use crate::error::{ModelError, Result};

/// The SigLIP vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// Patches per side of the grid.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Image tokens per image: (image_size / patch_size)^2.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    /// Length of one flattened patch: channels * patch * patch.
    pub fn patch_dim(&self) -> usize {
        self.num_channels * self.patch_size * self.patch_size
    }
}

/// The Gemma decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
}

/// How image features reach the decoder's width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    /// One linear layer with bias (PaliGemma's choice; transformers' layout).
    Linear,
    /// Linear, tanh-GELU, linear (the paper's MLP ablation; not loadable by transformers).
    Mlp,
}

/// A whole PaliGemma.
#[derive(Debug, Clone, PartialEq)]
pub struct PaliGemmaConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub image_token_id: u32,
    pub pad_token_id: u32,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
    pub connector: Connector,
}

/// Names accepted by [`PaliGemmaConfig::preset`].
pub const PRESETS: &[&str] = &[
    "tiny",
    "small",
    "paligemma-3b-pt-224",
    "paligemma-3b-pt-448",
    "paligemma-3b-pt-896",
];

impl PaliGemmaConfig {
    /// The oracle fixture's model: 127,776 parameters (`tests/fixtures/paligemma-tiny`).
    pub fn tiny() -> Self {
        PaliGemmaConfig {
            vision: VisionConfig {
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                num_channels: 3,
                image_size: 56,
                patch_size: 14,
                layer_norm_eps: 1e-6,
            },
            text: TextConfig {
                vocab_size: 300,
                hidden_size: 64,
                intermediate_size: 128,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: 1,
                head_dim: 16,
                rms_norm_eps: 1e-6,
                rope_theta: 10000.0,
                max_position_embeddings: 128,
            },
            image_token_id: 299,
            pad_token_id: 0,
            bos_token_id: 2,
            eos_token_id: 1,
            connector: Connector::Linear,
        }
    }

    /// The CPU quickstart model, the dims of `bench_torch.py` (7.9 M parameters, 224 px).
    pub fn small() -> Self {
        PaliGemmaConfig {
            vision: VisionConfig {
                hidden_size: 192,
                intermediate_size: 768,
                num_hidden_layers: 4,
                num_attention_heads: 3,
                num_channels: 3,
                image_size: 224,
                patch_size: 14,
                layer_norm_eps: 1e-6,
            },
            text: TextConfig {
                vocab_size: 8192,
                hidden_size: 256,
                intermediate_size: 1024,
                num_hidden_layers: 4,
                num_attention_heads: 4,
                num_key_value_heads: 1,
                head_dim: 64,
                rms_norm_eps: 1e-6,
                rope_theta: 10000.0,
                max_position_embeddings: 512,
            },
            image_token_id: 8191,
            pad_token_id: 0,
            bos_token_id: 2,
            eos_token_id: 1,
            connector: Connector::Linear,
        }
    }

    /// `paligemma-3b-pt-{224,448,896}`: SigLIP So400m/14 and Gemma 2B.
    pub fn paligemma_3b(resolution: usize) -> Self {
        PaliGemmaConfig {
            vision: VisionConfig {
                hidden_size: 1152,
                intermediate_size: 4304,
                num_hidden_layers: 27,
                num_attention_heads: 16,
                num_channels: 3,
                image_size: resolution,
                patch_size: 14,
                layer_norm_eps: 1e-6,
            },
            text: TextConfig {
                vocab_size: 257216,
                hidden_size: 2048,
                intermediate_size: 16384,
                num_hidden_layers: 18,
                num_attention_heads: 8,
                num_key_value_heads: 1,
                head_dim: 256,
                rms_norm_eps: 1e-6,
                rope_theta: 10000.0,
                max_position_embeddings: 8192,
            },
            image_token_id: 257152,
            pad_token_id: 0,
            bos_token_id: 2,
            eos_token_id: 1,
            connector: Connector::Linear,
        }
    }

    /// A config by name: one of [`PRESETS`] (`paligemma-3b-224` is accepted for `-pt-224`).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "small" => Ok(Self::small()),
            "paligemma-3b-pt-224" | "paligemma-3b-224" => Ok(Self::paligemma_3b(224)),
            "paligemma-3b-pt-448" | "paligemma-3b-448" => Ok(Self::paligemma_3b(448)),
            "paligemma-3b-pt-896" | "paligemma-3b-896" => Ok(Self::paligemma_3b(896)),
            _ => Err(ModelError::Config(format!(
                "unknown config `{name}` (known: {})",
                PRESETS.join(", ")
            ))),
        }
    }

    /// Image tokens per image.
    pub fn num_image_tokens(&self) -> usize {
        self.vision.num_patches()
    }

    /// Checks the dimensions fit together.
    pub fn validate(&self) -> Result<()> {
        let (v, t) = (&self.vision, &self.text);
        let err = |m: String| Err(ModelError::Config(m));
        if v.num_attention_heads == 0 || v.hidden_size % v.num_attention_heads != 0 {
            return err(format!(
                "vision hidden_size {} is not a multiple of num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.patch_size == 0 || v.image_size % v.patch_size != 0 {
            return err(format!(
                "vision image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if t.num_key_value_heads == 0 || t.num_attention_heads % t.num_key_value_heads != 0 {
            return err(format!(
                "text num_attention_heads {} is not a multiple of num_key_value_heads {}",
                t.num_attention_heads, t.num_key_value_heads
            ));
        }
        if t.head_dim % 2 != 0 {
            return err(format!(
                "text head_dim {} must be even for RoPE",
                t.head_dim
            ));
        }
        for (name, id) in [
            ("pad_token_id", self.pad_token_id),
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
        ] {
            if id as usize >= t.vocab_size {
                return err(format!(
                    "{name} {id} is outside the vocabulary ({})",
                    t.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// Parses transformers' PaliGemma `config.json`.
    pub fn from_hf_json(v: &Value) -> Result<Self> {
        let tc = v.get("text_config").unwrap_or(&Value::Null);
        let vc = v.get("vision_config").unwrap_or(&Value::Null);
        let base = Self::paligemma_3b(224);
        let num = |o: &Value, k: &str, d: f64| o.get(k).and_then(Value::as_f64).unwrap_or(d);
        let int = |o: &Value, k: &str, d: usize| {
            o.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .unwrap_or(d)
        };
        let act_ok = |o: &Value, which: &str| -> Result<()> {
            let act = o
                .get("hidden_act")
                .or_else(|| o.get("hidden_activation"))
                .and_then(Value::as_str)
                .unwrap_or("gelu_pytorch_tanh");
            match act {
                "gelu_pytorch_tanh" | "gelu_fast" | "gelu_new" | "gelu" => Ok(()),
                other => Err(ModelError::Config(format!(
                    "{which} hidden_act `{other}` is not supported (tanh GELU only)"
                ))),
            }
        };
        act_ok(tc, "text_config")?;
        act_ok(vc, "vision_config")?;
        if vc.get("vision_use_head").and_then(Value::as_bool) == Some(true) {
            return Err(ModelError::Config(
                "vision_use_head=true is not supported".into(),
            ));
        }
        if tc.get("tie_word_embeddings").and_then(Value::as_bool) == Some(false)
            || v.get("tie_word_embeddings").and_then(Value::as_bool) == Some(false)
        {
            return Err(ModelError::Config("untied lm_head is not supported".into()));
        }
        let hidden = int(tc, "hidden_size", base.text.hidden_size);
        let heads = int(tc, "num_attention_heads", base.text.num_attention_heads);
        let rope_theta = tc
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or_else(|| num(tc, "rope_theta", 10000.0));
        let image_size = int(vc, "image_size", base.vision.image_size);
        let vocab = int(tc, "vocab_size", int(v, "vocab_size", base.text.vocab_size));
        let connector = match v.get("paliforge_connector").and_then(Value::as_str) {
            None | Some("linear") => Connector::Linear,
            Some("mlp") => Connector::Mlp,
            Some(o) => return Err(ModelError::Config(format!("unknown connector `{o}`"))),
        };
        let projection_dim = int(v, "projection_dim", hidden);
        if projection_dim != hidden {
            return Err(ModelError::Config(format!(
                "projection_dim {projection_dim} differs from text hidden_size {hidden}"
            )));
        }
        let cfg = PaliGemmaConfig {
            vision: VisionConfig {
                hidden_size: int(vc, "hidden_size", base.vision.hidden_size),
                intermediate_size: int(vc, "intermediate_size", base.vision.intermediate_size),
                num_hidden_layers: int(vc, "num_hidden_layers", base.vision.num_hidden_layers),
                num_attention_heads: int(
                    vc,
                    "num_attention_heads",
                    base.vision.num_attention_heads,
                ),
                num_channels: int(vc, "num_channels", 3),
                image_size,
                patch_size: int(vc, "patch_size", base.vision.patch_size),
                layer_norm_eps: num(vc, "layer_norm_eps", 1e-6),
            },
            text: TextConfig {
                vocab_size: vocab,
                hidden_size: hidden,
                intermediate_size: int(tc, "intermediate_size", base.text.intermediate_size),
                num_hidden_layers: int(tc, "num_hidden_layers", base.text.num_hidden_layers),
                num_attention_heads: heads,
                num_key_value_heads: int(tc, "num_key_value_heads", heads),
                head_dim: int(tc, "head_dim", hidden / heads.max(1)),
                rms_norm_eps: num(tc, "rms_norm_eps", 1e-6),
                rope_theta,
                max_position_embeddings: int(
                    tc,
                    "max_position_embeddings",
                    base.text.max_position_embeddings,
                ),
            },
            image_token_id: int(v, "image_token_index", int(v, "image_token_id", 257152)) as u32,
            pad_token_id: int(tc, "pad_token_id", int(v, "pad_token_id", 0)) as u32,
            bos_token_id: int(tc, "bos_token_id", int(v, "bos_token_id", 2)) as u32,
            eos_token_id: int(tc, "eos_token_id", int(v, "eos_token_id", 1)) as u32,
            connector,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// transformers' PaliGemma `config.json` for this model.
    pub fn to_hf_json(&self) -> Value {
        let (v, t) = (&self.vision, &self.text);
        let mut out = json!({
            "architectures": ["PaliGemmaForConditionalGeneration"],
            "model_type": "paligemma",
            "dtype": "float32",
            "hidden_size": t.hidden_size,
            "projection_dim": t.hidden_size,
            "image_token_index": self.image_token_id,
            "vocab_size": t.vocab_size,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": true,
            "text_config": {
                "model_type": "gemma",
                "attention_bias": false,
                "attention_dropout": 0.0,
                "hidden_act": "gelu_pytorch_tanh",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "head_dim": t.head_dim,
                "rms_norm_eps": t.rms_norm_eps,
                "rope_theta": t.rope_theta,
                "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"},
                "max_position_embeddings": t.max_position_embeddings,
                "num_image_tokens": self.num_image_tokens(),
                "pad_token_id": self.pad_token_id,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id,
                "tie_word_embeddings": true,
                // transformers 5 reads the prefix's full attention from this (PaliGemmaConfig
                // sets it when absent); written so the file says so, as transformers' own does.
                "use_bidirectional_attention": true,
            },
            "vision_config": {
                "model_type": "siglip_vision_model",
                "attention_dropout": 0.0,
                "hidden_act": "gelu_pytorch_tanh",
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_hidden_layers,
                "num_attention_heads": v.num_attention_heads,
                "num_channels": v.num_channels,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "layer_norm_eps": v.layer_norm_eps,
                "projection_dim": t.hidden_size,
                "vision_use_head": false,
            },
        });
        if self.connector == Connector::Mlp {
            out["paliforge_connector"] = json!("mlp");
        }
        out
    }

    /// Reads `config.json` (transformers' format).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: path.to_owned(),
            source: e,
        })?;
        Self::from_hf_json(&v).map_err(|e| match e {
            ModelError::Config(m) => ModelError::Config(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Writes `config.json` (transformers' format).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_hf_json()).expect("json");
        std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_round_trip_through_hf_json() {
        for name in PRESETS {
            let c = PaliGemmaConfig::preset(name).unwrap();
            c.validate().unwrap();
            let back = PaliGemmaConfig::from_hf_json(&c.to_hf_json()).unwrap();
            assert_eq!(back, c, "{name}");
        }
        assert_eq!(PaliGemmaConfig::paligemma_3b(224).num_image_tokens(), 256);
        assert_eq!(PaliGemmaConfig::paligemma_3b(448).num_image_tokens(), 1024);
        assert_eq!(PaliGemmaConfig::paligemma_3b(896).num_image_tokens(), 4096);
        assert!(PaliGemmaConfig::preset("nope").is_err());
    }

    /// The Hub's released configs list only a few keys and rely on transformers' defaults.
    #[test]
    fn reads_a_sparse_hub_style_config() {
        let v: Value = serde_json::from_str(
            r#"{
            "_name_or_path": "google/paligemma-3b-pt-224", "architectures": ["PaliGemmaForConditionalGeneration"],
            "bos_token_id": 2, "eos_token_id": 1, "hidden_size": 2048, "ignore_index": -100,
            "image_token_index": 257152, "model_type": "paligemma", "pad_token_id": 0, "projection_dim": 2048,
            "text_config": {"hidden_size": 2048, "intermediate_size": 16384, "model_type": "gemma",
                "num_attention_heads": 8, "num_hidden_layers": 18, "num_image_tokens": 256,
                "num_key_value_heads": 1, "torch_dtype": "float32", "vocab_size": 257216},
            "torch_dtype": "float32", "transformers_version": "4.41.0.dev0",
            "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "model_type": "siglip_vision_model",
                "num_attention_heads": 16, "num_hidden_layers": 27, "num_image_tokens": 256, "patch_size": 14,
                "projection_dim": 2048, "projector_hidden_act": "gelu_fast", "vision_use_head": false},
            "vocab_size": 257216}"#,
        )
        .unwrap();
        assert_eq!(
            PaliGemmaConfig::from_hf_json(&v).unwrap(),
            PaliGemmaConfig::paligemma_3b(224)
        );
    }

    #[test]
    fn reads_the_fixture_config() {
        let p =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/paligemma-tiny/config.json");
        assert_eq!(PaliGemmaConfig::load(&p).unwrap(), PaliGemmaConfig::tiny());
    }
}
