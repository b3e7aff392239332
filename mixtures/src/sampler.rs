//! Which task supplies the next example: an exact, resumable weighted interleave.
//!
//! Each stage runs smooth weighted round-robin in integer arithmetic. Every task holds a
//! credit; per draw, each active task's credit grows by its weight, the task with the most
//! credit is drawn (ties to the first task by name), and the drawn task pays the sum of all
//! active weights. Credits stay bounded, so in *every* window of the schedule each task's
//! count is within a few examples of `window × weight`: a 1 % task appears once about every
//! 100 examples, never in bursts. A seeded jitter of the starting credits (per stage) keeps
//! tasks with equal weights from always coming in the same order.
//!
//! Weights become integers (normalised to 2³² per stage) before anything is summed, so the
//! schedule is bit-for-bit the same on every machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::SamplerError;
use crate::spec::{Budget, Mixture, Stage};
use crate::validate::ValidationContext;

/// Fixed-point scale of normalised weights.
const WEIGHT_SCALE: f64 = (1u64 << 32) as f64;

/// One decision of the sampler: task `task` supplies the next example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    /// Index of the stage the example belongs to.
    pub stage: usize,
    /// Index into [`Sampler::task_names`].
    pub task: usize,
    /// How many examples this task supplied before this one, over the whole run.
    pub example: u64,
    /// The task's current pass over its data (0-based)...
    pub epoch: u32,
    /// ...and the example's position within that pass: the row to read, in the pass's order.
    pub position: u64,
}

/// Counters of one task, kept across stages (and across appended stages).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskCounters {
    /// Examples drawn over the whole run.
    pub examples: u64,
    /// Completed passes over the task's data.
    pub epochs: u32,
    /// Examples drawn in the current pass.
    pub in_epoch: u64,
    /// Passes completed in the current stage (what `epochs` budgets count).
    pub stage_epochs: u32,
    /// Rows per pass, when the caller told us; then passes end by themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_len: Option<u64>,
    /// Dropped for good by [`Sampler::exhaust`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exhausted: bool,
}

/// Everything needed to continue a schedule exactly: small, and plain serde.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerState {
    /// The stage the next example comes from; the number of stages once finished.
    pub stage: usize,
    /// Examples drawn in that stage so far.
    pub stage_examples: u64,
    /// Credit of every task still drawn in the stage; empty before a stage starts.
    pub credits: BTreeMap<String, i64>,
    /// Per-task counters, by task name.
    pub tasks: BTreeMap<String, TaskCounters>,
}

/// A stage compiled for drawing.
#[derive(Debug, Clone)]
struct Plan {
    /// Fixed-point weight per task id; 0 for tasks the stage does not draw.
    weights: Vec<i64>,
    budget: PlanBudget,
}

#[derive(Debug, Clone, Copy)]
enum PlanBudget {
    Examples(u64),
    Epochs { epochs: u32, task: usize },
}

/// The weighted schedule of a whole mixture, stage after stage.
#[derive(Debug, Clone)]
pub struct Sampler {
    seed: u64,
    names: Vec<String>,
    /// Passes each task may make over its data (its source's `epochs`).
    limits: Vec<Option<u32>>,
    stages: Vec<Stage>,
    plans: Vec<Plan>,
    stage: usize,
    stage_examples: u64,
    /// (task id, credit) of the tasks being drawn, in id order; empty until the stage starts.
    active: Vec<(usize, i64)>,
    counters: Vec<TaskCounters>,
    /// Counters of tasks this mixture no longer has, carried so a later state still holds them.
    retired: BTreeMap<String, TaskCounters>,
}

impl Sampler {
    /// A sampler at the start of the mixture's first stage. The mixture must validate (with
    /// the default context).
    pub fn new(mixture: &Mixture) -> Result<Sampler, SamplerError> {
        let mut sampler = Sampler::compile(mixture)?;
        sampler.settle();
        Ok(sampler)
    }

    /// Continues from `state`, taken from a sampler over this mixture, or over a mixture that
    /// this one extends with more stages (continuous pretraining): every task keeps its
    /// counters, and a finished run moves on to the first appended stage.
    pub fn restore(mixture: &Mixture, state: &SamplerState) -> Result<Sampler, SamplerError> {
        let mut sampler = Sampler::compile(mixture)?;
        sampler.set_state(state)?;
        Ok(sampler)
    }

    /// Puts this sampler back to `state` (e.g. to undo a draw). On error it is unchanged.
    pub fn set_state(&mut self, state: &SamplerState) -> Result<(), SamplerError> {
        let mut s = self.clone();
        let stages = s.plans.len();
        if state.stage > stages || (state.stage == stages && !state.credits.is_empty()) {
            return Err(SamplerError::StageOutOfRange {
                stage: state.stage,
                stages,
            });
        }
        s.counters.fill(TaskCounters::default());
        s.retired.clear();
        for (name, counters) in &state.tasks {
            match s.task_id(name) {
                Some(id) => s.counters[id] = counters.clone(),
                None => _ = s.retired.insert(name.clone(), counters.clone()),
            }
        }
        s.stage = state.stage;
        s.stage_examples = state.stage_examples;
        s.active.clear();
        if !state.credits.is_empty() {
            // The credited tasks must be exactly those the stage still draws.
            let expected: Vec<usize> = s.drawable();
            let mismatch = |task: &str| SamplerError::StateMismatch {
                stage: state.stage,
                task: task.into(),
            };
            for (name, &credit) in &state.credits {
                let id = s
                    .task_id(name)
                    .filter(|id| expected.contains(id))
                    .ok_or_else(|| mismatch(name))?;
                s.active.push((id, credit));
            }
            if let Some(&missing) = expected
                .iter()
                .find(|id| !s.active.iter().any(|(a, _)| a == *id))
            {
                return Err(mismatch(&s.names[missing]));
            }
            s.active.sort_unstable();
        }
        s.settle();
        *self = s;
        Ok(())
    }

    fn compile(mixture: &Mixture) -> Result<Sampler, SamplerError> {
        mixture.validate(&ValidationContext::default())?;
        let names: Vec<String> = mixture.tasks.keys().cloned().collect();
        let id = |name: &str| names.iter().position(|n| n == name);
        let mut plans = Vec::new();
        for (i, stage) in mixture.stages.iter().enumerate() {
            let mut weights = vec![0; names.len()];
            let stage_weights = mixture
                .stage_weights(i)
                .expect("validation ensures a positive weight");
            for (task, w) in stage_weights {
                // Every drawn task keeps at least one unit, however small its share.
                weights[id(&task).expect("validated")] = ((w * WEIGHT_SCALE).round() as i64).max(1);
            }
            let budget = match &stage.budget {
                Budget::Examples(n) => PlanBudget::Examples(*n),
                Budget::Epochs { epochs, task } => PlanBudget::Epochs {
                    epochs: *epochs,
                    task: id(task).expect("validated"),
                },
            };
            plans.push(Plan { weights, budget });
        }
        let limits = mixture
            .tasks
            .values()
            .map(|t| mixture.sources[&t.source].epochs)
            .collect();
        Ok(Sampler {
            seed: mixture.seed,
            counters: vec![TaskCounters::default(); names.len()],
            names,
            limits,
            stages: mixture.stages.clone(),
            plans,
            stage: 0,
            stage_examples: 0,
            active: Vec::new(),
            retired: BTreeMap::new(),
        })
    }

    /// The next draw, or `None` once the last stage has ended.
    pub fn draw(&mut self) -> Option<Draw> {
        if self.stage >= self.plans.len() {
            return None;
        }
        let weights = &self.plans[self.stage].weights;
        let total: i64 = self.active.iter().map(|&(id, _)| weights[id]).sum();
        for (id, credit) in &mut self.active {
            *credit += weights[*id];
        }
        // `max_by_key` keeps the last maximum; ties must go to the first task instead.
        let mut pick = 0;
        for (i, &(_, credit)) in self.active.iter().enumerate() {
            if credit > self.active[pick].1 {
                pick = i;
            }
        }
        self.active[pick].1 -= total;
        let task = self.active[pick].0;

        let counters = &mut self.counters[task];
        let draw = Draw {
            stage: self.stage,
            task,
            example: counters.examples,
            epoch: counters.epochs,
            position: counters.in_epoch,
        };
        counters.examples += 1;
        counters.in_epoch += 1;
        self.stage_examples += 1;
        if counters.epoch_len == Some(counters.in_epoch) {
            self.finish_epoch(task);
        }
        self.settle();
        Some(draw)
    }

    /// Tells the sampler how many rows one pass of `task` holds (after its filter); from then
    /// on passes end by themselves. Kept in the state.
    /// A task with no rows at all is the caller's to [`exhaust`](Sampler::exhaust); 0 here
    /// means "unknown".
    pub fn set_epoch_len(&mut self, task: usize, rows: u64) {
        self.counters[task].epoch_len = (rows > 0).then_some(rows);
        if rows > 0 && self.counters[task].in_epoch >= rows {
            self.finish_epoch(task);
            self.settle();
        }
    }

    /// Reports that `task`'s reader has just delivered the last row of its current pass (for
    /// tasks without a known `epoch_len`). Call it before the next draw.
    pub fn end_epoch(&mut self, task: usize) {
        self.finish_epoch(task);
        self.settle();
    }

    /// Drops `task` for the rest of the run, whatever its epoch limit: the pipeline found its
    /// data spent. The remaining tasks share its weight.
    pub fn exhaust(&mut self, task: usize) {
        self.counters[task].exhausted = true;
        self.active.retain(|&(id, _)| id != task);
        self.settle();
    }

    /// The state to save in a checkpoint.
    pub fn state(&self) -> SamplerState {
        let credits = self
            .active
            .iter()
            .map(|&(id, credit)| (self.names[id].clone(), credit))
            .collect();
        let mut tasks = self.retired.clone();
        tasks.extend(
            self.names
                .iter()
                .cloned()
                .zip(self.counters.iter().cloned()),
        );
        SamplerState {
            stage: self.stage,
            stage_examples: self.stage_examples,
            credits,
            tasks,
        }
    }

    /// The stage the next example comes from, with its index; `None` once finished.
    pub fn current_stage(&self) -> Option<(usize, &Stage)> {
        self.stages.get(self.stage).map(|s| (self.stage, s))
    }

    /// Examples drawn in the current stage so far.
    pub fn stage_examples(&self) -> u64 {
        self.stage_examples
    }

    pub fn is_finished(&self) -> bool {
        self.stage >= self.plans.len()
    }

    /// Task names; a [`Draw`]'s `task` indexes this.
    pub fn task_names(&self) -> &[String] {
        &self.names
    }

    pub fn task_id(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Counters of one task, for metrics.
    pub fn counters(&self, task: usize) -> &TaskCounters {
        &self.counters[task]
    }

    /// The tasks the current stage still draws, by id.
    pub fn active_tasks(&self) -> impl Iterator<Item = usize> + '_ {
        self.active.iter().map(|&(id, _)| id)
    }

    /// A seed for shuffling `task`'s rows in pass `epoch`: each pass gets its own order, the
    /// same on every machine and after every restore.
    pub fn epoch_seed(&self, task: usize, epoch: u32) -> u64 {
        let name = fnv1a(self.names[task].as_bytes());
        let mut state =
            self.seed ^ name.rotate_left(17) ^ (epoch as u64).wrapping_mul(0xA24B_AED4_963E_E407);
        splitmix64(&mut state)
    }

    fn finish_epoch(&mut self, task: usize) {
        let counters = &mut self.counters[task];
        counters.epochs += 1;
        counters.stage_epochs += 1;
        counters.in_epoch = 0;
        if self.spent(task) {
            // Its share goes to the others: the remaining weights simply sum to less.
            self.active.retain(|&(id, _)| id != task);
        }
    }

    fn spent(&self, task: usize) -> bool {
        let counters = &self.counters[task];
        counters.exhausted || self.limits[task].is_some_and(|limit| counters.epochs >= limit)
    }

    /// Tasks the current stage draws: weighted and not spent, in id order.
    fn drawable(&self) -> Vec<usize> {
        let weights = &self.plans[self.stage].weights;
        (0..self.names.len())
            .filter(|&id| weights[id] > 0 && !self.spent(id))
            .collect()
    }

    /// Moves past finished stages and starts the next one, so the state always names the
    /// stage the next draw comes from.
    fn settle(&mut self) {
        while self.stage < self.plans.len() {
            if self.active.is_empty() && self.stage_examples == 0 {
                self.start_stage();
            }
            if !self.stage_done() {
                return;
            }
            self.stage += 1;
            self.stage_examples = 0;
            self.active.clear();
        }
    }

    /// Fresh credits for the stage: a seeded jitter below each task's weight.
    fn start_stage(&mut self) {
        for counters in &mut self.counters {
            counters.stage_epochs = 0;
        }
        let mut rng = self.seed ^ (self.stage as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let weights = &self.plans[self.stage].weights;
        self.active = self
            .drawable()
            .into_iter()
            .map(|id| (id, (splitmix64(&mut rng) % weights[id] as u64) as i64))
            .collect();
    }

    fn stage_done(&self) -> bool {
        if self.active.is_empty() {
            return true;
        }
        match self.plans[self.stage].budget {
            PlanBudget::Examples(n) => self.stage_examples >= n,
            PlanBudget::Epochs { epochs, task } => {
                self.counters[task].stage_epochs >= epochs
                    || !self.active.iter().any(|&(id, _)| id == task)
            }
        }
    }
}

impl Iterator for Sampler {
    type Item = Draw;
    fn next(&mut self) -> Option<Draw> {
        self.draw()
    }
}

/// SplitMix64: a tiny, well-mixed, portable generator.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a: a stable hash of task names (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}
