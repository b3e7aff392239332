//! Hugging Face safetensors checkpoints in and out.
//!
//! Loading accepts every name layout in use for PaliGemma: transformers 5's
//! (`vision_tower.embeddings...`, `language_model.model...`), the Hub's
//! (`vision_tower.vision_model...`), and transformers 4.5x's in-memory names
//! (`model.language_model.layers...`); a stored `lm_head.weight` is the tied embedding and is
//! ignored. Files are memory-mapped; a sharded checkpoint is read through
//! `model.safetensors.index.json`. A missing tensor, an unexpected one or a wrong shape is an
//! error naming it. Saving streams tensors to disk in either layout, optionally in shards,
//! writing under temporary names renamed when complete.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};

use crate::Dev;
use crate::config::PaliGemmaConfig;
use crate::error::{ModelError, Result};
use crate::layers::{ParamMut, Params};
use crate::paligemma::PaliGemma;

/// File of an unsharded checkpoint.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// transformers' configuration file.
pub const CONFIG_FILE: &str = "config.json";

/// How tensors are named on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameLayout {
    /// As transformers 5 saves: `vision_tower.embeddings...`.
    Transformers5,
    /// As the released Hub checkpoints: `vision_tower.vision_model.embeddings...`.
    Hub,
}

/// The name a tensor has in this crate (transformers 5's), from any accepted layout; `None` for
/// the tied `lm_head`.
pub fn canonical_name(name: &str) -> Option<String> {
    let mut n = name;
    if let Some(rest) = n.strip_prefix("model.")
        && ["vision_tower.", "language_model.", "multi_modal_projector."]
            .iter()
            .any(|p| rest.starts_with(p))
    {
        n = rest;
    }
    if n == "lm_head.weight" || n == "language_model.lm_head.weight" {
        return None;
    }
    if let Some(rest) = n.strip_prefix("vision_tower.vision_model.") {
        return Some(format!("vision_tower.{rest}"));
    }
    if let Some(rest) = n.strip_prefix("language_model.")
        && !rest.starts_with("model.")
    {
        return Some(format!("language_model.model.{rest}"));
    }
    Some(n.to_string())
}

/// The on-disk name of canonical tensor `name` in `layout`.
pub fn layout_name(name: &str, layout: NameLayout) -> String {
    match (layout, name.strip_prefix("vision_tower.")) {
        (NameLayout::Hub, Some(rest)) => format!("vision_tower.vision_model.{rest}"),
        _ => name.to_string(),
    }
}

/// The shape transformers gives a parameter (the patch embedding is a conv weight).
pub fn hf_shape(cfg: &PaliGemmaConfig, name: &str, shape: &[usize]) -> Vec<usize> {
    if name == "vision_tower.embeddings.patch_embedding.weight" {
        let v = &cfg.vision;
        vec![v.hidden_size, v.num_channels, v.patch_size, v.patch_size]
    } else {
        shape.to_vec()
    }
}

struct Mapped {
    path: PathBuf,
    mmap: Mmap,
}

fn map_file(path: &Path) -> Result<Mapped> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the file is opened read-only; like every mmap-based loader we rely on nobody
    // truncating it while it is mapped.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    Ok(Mapped {
        path: path.to_owned(),
        mmap,
    })
}

/// The safetensors files of a checkpoint: `path` itself if it is a file, else the shards named
/// by the index in the folder, else the folder's `model.safetensors`.
pub fn weight_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let index = path.join(INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: index.clone(),
            source: e,
        })?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::Safetensors {
                path: index.clone(),
                message: "no `weight_map` object".into(),
            })?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(Value::as_str)
            .map(|f| path.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let single = path.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::io(
        &single,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no {WEIGHTS_FILE} or {INDEX_FILE}"),
        ),
    ))
}

fn to_f32(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => {
            return Err(ModelError::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    })
}

/// Where every tensor of a checkpoint is: canonical name -> (file index, stored name).
fn index_tensors(
    files: &[Mapped],
    rename: &dyn Fn(&str) -> Option<String>,
) -> Result<HashMap<String, (usize, String)>> {
    let mut out = HashMap::new();
    for (fi, f) in files.iter().enumerate() {
        let st = SafeTensors::deserialize(&f.mmap).map_err(|e| ModelError::Safetensors {
            path: f.path.clone(),
            message: e.to_string(),
        })?;
        for name in st.names() {
            let Some(c) = rename(name) else { continue };
            if out.insert(c.clone(), (fi, name.clone())).is_some() {
                return Err(ModelError::UnexpectedTensor {
                    name: format!("{name} (duplicate of {c})"),
                    path: f.path.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// How a checkpoint maps onto the model's parameters.
pub(crate) struct LoadPlan<'a> {
    /// Stored name -> canonical name; `None` skips the tensor.
    pub rename: &'a dyn Fn(&str) -> Option<String>,
    /// Canonical names that may be absent (the model keeps its values).
    pub optional: &'a dyn Fn(&str) -> bool,
    /// Resample a position embedding stored for another grid to the model's.
    pub resize_position_embedding: bool,
    /// The token embedding may have fewer rows than the model's: the first rows are loaded
    /// (vocabulary extension), the rest keep their values.
    pub partial_embedding: bool,
}

const POS_EMB: &str = "vision_tower.embeddings.position_embedding.weight";
const EMBED: &str = "language_model.model.embed_tokens.weight";

/// Overwrites every parameter of `model` from the checkpoint at `path` (file or folder).
/// With `resize_position_embedding`, a position embedding stored for another resolution is
/// resampled (bilinear) to the model's grid.
pub fn load_weights_with(
    model: &mut PaliGemma,
    path: &Path,
    resize_position_embedding: bool,
) -> Result<()> {
    let plan = LoadPlan {
        rename: &canonical_name,
        optional: &|_| false,
        resize_position_embedding,
        partial_embedding: false,
    };
    load_planned(model, path, &plan)
}

/// Overwrites every parameter of `model` from the checkpoint at `path` (file or folder).
pub fn load_weights(model: &mut PaliGemma, path: &Path) -> Result<()> {
    load_weights_with(model, path, false)
}

/// Overwrites the vision tower of `model` from the image encoder in `path` (file or folder): a
/// SigLIP checkpoint (`vision_model.*`; its pooling head and text tower are skipped), a
/// PaliGemma one (only its vision tower is read), or an encoder saved alone. A position
/// embedding stored for another resolution is resampled to the model's grid; everything
/// outside the vision tower keeps its values.
pub fn load_image_encoder(model: &mut PaliGemma, path: &Path) -> Result<()> {
    let plan = LoadPlan {
        rename: &|n: &str| {
            let n = match n.strip_prefix("vision_model.") {
                Some(rest) => format!("vision_tower.{rest}"),
                None => canonical_name(n)?,
            };
            (n.starts_with("vision_tower.") && !n.starts_with("vision_tower.head.")).then_some(n)
        },
        optional: &|n: &str| !n.starts_with("vision_tower."),
        resize_position_embedding: true,
        partial_embedding: false,
    };
    load_planned(model, path, &plan)
}

pub(crate) fn load_planned(model: &mut PaliGemma, path: &Path, plan: &LoadPlan) -> Result<()> {
    let files: Vec<Mapped> = weight_files(path)?
        .iter()
        .map(|p| map_file(p))
        .collect::<Result<_>>()?;
    let index = index_tensors(&files, plan.rename)?;
    let parsed: Vec<SafeTensors> = files
        .iter()
        .map(|f| {
            SafeTensors::deserialize(&f.mmap).map_err(|e| ModelError::Safetensors {
                path: f.path.clone(),
                message: e.to_string(),
            })
        })
        .collect::<Result<_>>()?;
    let cfg = model.cfg.clone();
    let mut seen = std::collections::HashSet::new();
    let mut result = Ok(());
    model.visit_mut("", &mut |name, mut p: ParamMut<'_>| {
        if result.is_err() {
            return;
        }
        result = (|| {
            let Some((fi, stored)) = index.get(name) else {
                if (plan.optional)(name) {
                    return Ok(());
                }
                return Err(ModelError::MissingTensor {
                    name: name.to_string(),
                    path: path.to_owned(),
                });
            };
            let view = parsed[*fi]
                .tensor(stored)
                .map_err(|e| ModelError::Safetensors {
                    path: files[*fi].path.clone(),
                    message: format!("{stored}: {e}"),
                })?;
            let expected = hf_shape(&cfg, name, &p.shape());
            let found = view.shape().to_vec();
            let data = to_f32(stored, view.dtype(), view.data())?;
            let mismatch = || ModelError::ShapeMismatch {
                name: stored.clone(),
                expected: expected.clone(),
                found: found.clone(),
            };
            if found == expected {
                p.copy_from(&data);
            } else if name == POS_EMB
                && plan.resize_position_embedding
                && found.len() == 2
                && found[1] == expected[1]
            {
                let from = (found[0] as f64).sqrt().round() as usize;
                if from * from != found[0] {
                    return Err(mismatch());
                }
                tracing::info!(
                    from,
                    to = cfg.vision.grid(),
                    "resampling the position embedding grid"
                );
                p.copy_from(&resize_grid(&data, from, cfg.vision.grid(), expected[1]));
            } else if name == EMBED
                && plan.partial_embedding
                && found.len() == 2
                && found[1] == expected[1]
                && found[0] <= expected[0]
            {
                let mut cur = match &p {
                    ParamMut::Matrix(t) => t.as_vec(),
                    ParamMut::Vector(t) => t.as_vec(),
                };
                cur[..data.len()].copy_from_slice(&data);
                p.copy_from(&cur);
            } else {
                return Err(mismatch());
            }
            seen.insert(name.to_string());
            Ok(())
        })();
    });
    result?;
    if let Some((_, (fi, stored))) = index
        .iter()
        .filter(|(c, _)| !seen.contains(*c))
        .min_by_key(|(c, _)| c.as_str())
    {
        return Err(ModelError::UnexpectedTensor {
            name: stored.clone(),
            path: files[*fi].path.clone(),
        });
    }
    tracing::info!(path = %path.display(), tensors = seen.len(), "loaded weights");
    Ok(())
}

/// Resamples a `[from*from, dim]` grid of embeddings (row-major) to `[to*to, dim]`, bilinear
/// with half-pixel centres (`align_corners=False`), edges clamped.
pub fn resize_grid(data: &[f32], from: usize, to: usize, dim: usize) -> Vec<f32> {
    assert_eq!(data.len(), from * from * dim, "grid size");
    let coord = |i: usize| -> (usize, usize, f32) {
        let x = ((i as f64 + 0.5) * from as f64 / to as f64 - 0.5).clamp(0.0, (from - 1) as f64);
        let x0 = x.floor() as usize;
        let x1 = (x0 + 1).min(from - 1);
        (x0, x1, (x - x0 as f64) as f32)
    };
    let mut out = vec![0.0; to * to * dim];
    for y in 0..to {
        let (y0, y1, fy) = coord(y);
        for x in 0..to {
            let (x0, x1, fx) = coord(x);
            let o = &mut out[(y * to + x) * dim..(y * to + x + 1) * dim];
            let at =
                |yy: usize, xx: usize| &data[(yy * from + xx) * dim..(yy * from + xx + 1) * dim];
            let (a, b, c, d) = (at(y0, x0), at(y0, x1), at(y1, x0), at(y1, x1));
            for k in 0..dim {
                let top = a[k] * (1.0 - fx) + b[k] * fx;
                let bot = c[k] * (1.0 - fx) + d[k] * fx;
                o[k] = top * (1.0 - fy) + bot * fy;
            }
        }
    }
    out
}

/// Loads a Hugging Face PaliGemma folder (`config.json` and safetensors).
pub fn load(dir: &Path, dev: &Dev) -> Result<PaliGemma> {
    let cfg = PaliGemmaConfig::load(&dir.join(CONFIG_FILE))?;
    let mut model = PaliGemma::new(&cfg, dev, 0)?;
    load_weights(&mut model, dir)?;
    Ok(model)
}

/// Loads a PaliGemma folder for another input resolution (Stage 2: 224 -> 448, say): the
/// learned position-embedding grid is resampled to `image_size / patch_size` per side.
pub fn load_at_resolution(dir: &Path, dev: &Dev, image_size: usize) -> Result<PaliGemma> {
    let mut cfg = PaliGemmaConfig::load(&dir.join(CONFIG_FILE))?;
    cfg.vision.image_size = image_size;
    let mut model = PaliGemma::new(&cfg, dev, 0)?;
    load_weights_with(&mut model, dir, true)?;
    Ok(model)
}

/// Options of [`save`].
#[derive(Clone, Debug)]
pub struct SaveOptions {
    pub layout: NameLayout,
    /// Start a new shard past this many bytes; `None`: one `model.safetensors`.
    pub max_shard_bytes: Option<usize>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            layout: NameLayout::Transformers5,
            max_shard_bytes: None,
        }
    }
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes one safetensors file of f32 tensors, streaming each tensor's data from `data(i)`.
fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    mut data: impl FnMut(usize) -> Vec<f32>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).expect("json");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let tmp = tmp_name(path);
    let io = |e| ModelError::io(&tmp, e);
    let mut w = BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let v = data(i);
        assert_eq!(v.len(), shape.iter().product::<usize>(), "{name}");
        let mut buf = Vec::with_capacity(v.len() * 4);
        for x in v {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        w.write_all(&buf).map_err(io)?;
    }
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}

/// Saves `model` as a Hugging Face PaliGemma folder: `config.json` and the weights (one file,
/// or shards and `model.safetensors.index.json`). The tied `lm_head` is not stored.
pub fn save(model: &PaliGemma, dir: &Path, opts: &SaveOptions) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let params = model.named_params();
    let entries: Vec<(String, Vec<usize>)> = params
        .iter()
        .map(|(n, p)| {
            (
                layout_name(n, opts.layout),
                hf_shape(&model.cfg, n, &p.shape()),
            )
        })
        .collect();
    let size = |s: &Vec<usize>| s.iter().product::<usize>() * 4;
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut bytes = 0;
    for (i, (_, shape)) in entries.iter().enumerate() {
        if let Some(max) = opts.max_shard_bytes
            && bytes > 0
            && bytes + size(shape) > max
        {
            shards.push(vec![]);
            bytes = 0;
        }
        bytes += size(shape);
        shards.last_mut().expect("shard").push(i);
    }
    let total: usize = entries.iter().map(|(_, s)| size(s)).sum();
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    for (si, shard) in shards.iter().enumerate() {
        let file = if n == 1 && opts.max_shard_bytes.is_none() {
            WEIGHTS_FILE.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", si + 1, n)
        };
        let list: Vec<(String, Vec<usize>)> = shard.iter().map(|&i| entries[i].clone()).collect();
        for (name, _) in &list {
            weight_map.insert(name.clone(), file.clone());
        }
        write_safetensors(&dir.join(&file), &list, |k| params[shard[k]].1.to_vec())?;
    }
    if n > 1 || opts.max_shard_bytes.is_some() {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let path = dir.join(INDEX_FILE);
        let tmp = tmp_name(&path);
        std::fs::write(&tmp, serde_json::to_string_pretty(&index).expect("json"))
            .map_err(|e| ModelError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| ModelError::io(&path, e))?;
    }
    model.cfg.save(&dir.join(CONFIG_FILE))?;
    tracing::info!(dir = %dir.display(), shards = n, bytes = total, "saved checkpoint");
    Ok(())
}

/// Writes any set of parameters (not a PaliGemma: the contrastive text side) as one
/// safetensors file, under its own names and shapes.
pub fn save_params(params: &impl Params, path: &Path) -> Result<()> {
    let named = params.named_params();
    let entries: Vec<(String, Vec<usize>)> =
        named.iter().map(|(n, p)| (n.clone(), p.shape())).collect();
    write_safetensors(path, &entries, |i| named[i].1.to_vec())
}

/// The values of tensor `name` of `st` (read from `path`), which must have exactly `shape`.
pub(crate) fn read_exact(
    st: &SafeTensors,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>> {
    let view = st.tensor(name).map_err(|_| ModelError::MissingTensor {
        name: name.to_string(),
        path: path.to_owned(),
    })?;
    if view.shape() != shape {
        return Err(ModelError::ShapeMismatch {
            name: name.to_string(),
            expected: shape.to_vec(),
            found: view.shape().to_vec(),
        });
    }
    to_f32(name, view.dtype(), view.data())
}

/// Overwrites every parameter of `params` from a file [`save_params`] wrote for the same set.
pub fn load_params(params: &mut impl Params, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Safetensors {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut result = Ok(());
    params.visit_mut("", &mut |name, mut p| {
        if result.is_ok() {
            result = read_exact(&st, path, name, &p.shape()).map(|v| p.copy_from(&v));
        }
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_params_file_without_a_tensor_names_the_tensor_and_the_file() {
        let dev = crate::Dev::default();
        let cfg = crate::PaliGemmaConfig::tiny();
        let mut model = crate::PaliGemma::new(&cfg, &dev, 0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vision.safetensors");
        save_params(&model.vision_tower, &path).unwrap();
        let e = load_params(&mut model, &path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn grid_resize_is_identity_at_the_same_size_and_interpolates_when_growing() {
        let dim = 2;
        let g: Vec<f32> = (0..4 * 4 * dim).map(|i| i as f32).collect();
        assert_eq!(resize_grid(&g, 4, 4, dim), g);
        // a linear ramp stays a ramp (away from the clamped border) when upsampled 2x
        let ramp: Vec<f32> = (0..16)
            .flat_map(|i| [(i % 4) as f32, (i / 4) as f32])
            .collect();
        let up = resize_grid(&ramp, 4, 8, 2);
        // output x = 3 maps to input (3.5 * 4 / 8 - 0.5) = 1.25
        assert!((up[(2 * 8 + 3) * 2] - 1.25).abs() < 1e-6);
        assert!((up[(3 * 8 + 2) * 2 + 1] - 1.25).abs() < 1e-6);
        assert_eq!(up[0], 0.0);
        let down = resize_grid(&up, 8, 4, 2);
        assert!(down.iter().zip(&ramp).all(|(a, b)| (a - b).abs() < 0.26));
    }

    #[test]
    fn names_from_every_layout_map_to_one() {
        for (stored, want) in [
            (
                "vision_tower.vision_model.embeddings.patch_embedding.weight",
                Some("vision_tower.embeddings.patch_embedding.weight"),
            ),
            (
                "vision_tower.encoder.layers.0.mlp.fc1.bias",
                Some("vision_tower.encoder.layers.0.mlp.fc1.bias"),
            ),
            (
                "model.vision_tower.vision_model.post_layernorm.weight",
                Some("vision_tower.post_layernorm.weight"),
            ),
            (
                "model.language_model.layers.1.mlp.up_proj.weight",
                Some("language_model.model.layers.1.mlp.up_proj.weight"),
            ),
            (
                "language_model.model.norm.weight",
                Some("language_model.model.norm.weight"),
            ),
            (
                "model.multi_modal_projector.linear.bias",
                Some("multi_modal_projector.linear.bias"),
            ),
            ("lm_head.weight", None),
            ("language_model.lm_head.weight", None),
        ] {
            assert_eq!(canonical_name(stored).as_deref(), want, "{stored}");
        }
        assert_eq!(
            layout_name("vision_tower.post_layernorm.bias", NameLayout::Hub),
            "vision_tower.vision_model.post_layernorm.bias"
        );
    }
}
