//! The whole pipeline as one ordered stream of batches.
//!
//! Readers (async, one per task) fetch rows ahead; a coordinator thread draws rows in the
//! schedule's order, runs the CPU stage (decode, resize, tokenize, format) on a worker pool a
//! window at a time, and packs the results in order. Every batch carries the [`StreamState`]
//! that resumes right after it, so a stream rebuilt from that state yields exactly the batches
//! that would have followed, whatever the number of threads.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, bounded};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::PipelineError;
use crate::bad_input::{BadInput, BadInputPolicy, BadInputStats, Reason};
use crate::batch::Batch;
use crate::example::Example;
use crate::format::Formatter;
use crate::image::{ImageError, ImageProcessor, SquareImage};
use crate::pack::{PackConfig, Packer};
use crate::schedule::Schedule;
use crate::source::{
    Cursor, Fetcher, OpenSource, Reader, RowFilter, ShardSpec, SourceConfig, SourceItem,
};
use crate::text::PaliTokenizer;
use crate::visual_prompt::VisualPrompt;

/// One task of the stream: which source feeds it and how its rows become examples.
pub struct StreamTask {
    pub name: String,
    /// Index into [`StreamConfig::sources`].
    pub source: usize,
    /// Non-image columns its templates read: `(name in the templates, column in the shards)`.
    pub columns: Vec<(String, String)>,
    pub filter: Option<RowFilter>,
    pub formatter: Formatter,
    /// A mark from the row drawn onto its images before they are resized.
    pub visual_prompt: Option<VisualPrompt>,
    /// A task the schedule never draws in this stream gets no reader.
    pub active: bool,
}

pub struct StreamConfig {
    pub sources: Vec<SourceConfig>,
    pub tasks: Vec<StreamTask>,
    pub pack: PackConfig,
    pub tokenizer: Arc<PaliTokenizer>,
    pub seed: u64,
    pub shard: ShardSpec,
    /// Workers of the CPU stage; 0 uses every core.
    pub threads: usize,
    /// Batches made ahead of the consumer.
    pub prefetch: usize,
    pub bad_input: BadInputPolicy,
}

/// Per-task progress, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskCounters {
    pub examples: u64,
    /// Epoch of the task's source the last example came from.
    pub epoch: u64,
}

/// Everything needed to resume a stream exactly: small, serialisable, saved in checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    /// Per task: its reader's position.
    pub cursors: Vec<Cursor>,
    /// The task schedule's own state.
    pub schedule: serde_json::Value,
    pub bad_inputs: BadInputStats,
    pub tasks: Vec<TaskCounters>,
    pub examples: u64,
    pub batches: u64,
}

/// A batch and the state that resumes right after it.
pub struct StreamBatch {
    pub batch: Batch,
    pub state: StreamState,
}

pub struct BatchStream {
    batches: Receiver<Result<StreamBatch, PipelineError>>,
    coordinator: Option<JoinHandle<()>>,
    // Dropped last: the readers run on it.
    _runtime: tokio::runtime::Runtime,
}

/// Rows drawn per trip to the worker pool: enough to keep every worker busy.
const WINDOW_PER_THREAD: usize = 16;
/// Windows queued on the pool at once (see `Coordinator::pump`). Three smaller windows rather
/// than two larger ones (the same rows in flight): the workers idle less while this thread
/// packs and draws, 1.92 cores busy of 2 instead of 1.89, +4 % examples a second.
const WINDOWS_ON_THE_POOL: usize = 3;
/// Rows each reader fetches ahead of the coordinator.
const READ_AHEAD: usize = 64;

impl BatchStream {
    /// Starts the stream from `state` (the default state starts from the beginning).
    pub fn start(
        config: StreamConfig,
        mut schedule: Box<dyn Schedule>,
        state: StreamState,
    ) -> Result<Self, PipelineError> {
        let n_tasks = config.tasks.len();
        if n_tasks == 0 {
            return Err(PipelineError::Config(
                "a stream needs at least one task".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("paliforge-read")
            .enable_all()
            .build()
            .map_err(|e| PipelineError::Config(format!("cannot start the reader runtime: {e}")))?;
        // Opened on the runtime that reads them: HTTP clients belong to the runtime they start on.
        // Only the sources of tasks this stream draws.
        let used = |s: usize| config.tasks.iter().any(|t| t.active && t.source == s);
        let sources: Vec<Option<Arc<OpenSource>>> = runtime.block_on(async {
            let opened = config.sources.iter().enumerate().map(|(s, source)| {
                let source = source.clone();
                async move {
                    if used(s) {
                        OpenSource::open(source).await.map(|s| Some(Arc::new(s)))
                    } else {
                        Ok(None)
                    }
                }
            });
            futures::future::join_all(opened)
                .await
                .into_iter()
                .collect::<Result<_, _>>()
        })?;
        let mut state = state;
        state.cursors.resize(n_tasks, Cursor::default());
        state.tasks.resize(n_tasks, TaskCounters::default());
        let fresh = state
            == StreamState {
                cursors: state.cursors.clone(),
                tasks: state.tasks.clone(),
                ..Default::default()
            };
        if fresh {
            // Shards whose footer is unreadable have no rows to stream; count them once, here.
            for bad in sources.iter().flatten().flat_map(|s| s.unreadable.iter()) {
                state.bad_inputs.record_bad(bad.clone());
            }
        }
        if !state.schedule.is_null() {
            schedule.restore(&state.schedule)?;
        }
        state.schedule = schedule.state();
        let mut receivers = Vec::with_capacity(n_tasks);
        for (t, task) in config.tasks.iter().enumerate() {
            if !task.active {
                receivers.push(None);
                continue;
            }
            let source = sources[task.source]
                .clone()
                .expect("opened for its active tasks");
            let fetch = source.config.fetch.clone();
            let reader = Reader {
                source,
                text_columns: task.columns.clone(),
                filter: task.filter.clone(),
                shard: config.shard,
                // Each task walks its source in its own order.
                seed: config.seed ^ (t as u64).wrapping_mul(0x9E37_79B9),
                fetcher: Fetcher::new(fetch),
            };
            let (tx, rx) = mpsc::channel(READ_AHEAD);
            runtime.spawn(reader.run(state.cursors[t], tx));
            receivers.push(Some(rx));
        }
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            config.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("paliforge-cpu-{i}"))
            .build()
            .map_err(|e| PipelineError::Config(format!("cannot start the worker pool: {e}")))?;
        let (tx, batches) = bounded(config.prefetch.max(1));
        let drawer = Drawer {
            schedule,
            receivers,
            position: Position {
                cursors: state.cursors.clone(),
                schedule: state.schedule.clone(),
            },
            window: threads * WINDOW_PER_THREAD,
        };
        let coordinator = Coordinator {
            config,
            drawer,
            state,
            pool,
        };
        let coordinator = std::thread::Builder::new()
            .name("paliforge-stream".into())
            .spawn(move || coordinator.run(tx))
            .map_err(|e| PipelineError::Config(format!("cannot start the stream thread: {e}")))?;
        Ok(Self {
            batches,
            coordinator: Some(coordinator),
            _runtime: runtime,
        })
    }
}

impl Iterator for BatchStream {
    type Item = Result<StreamBatch, PipelineError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.batches.recv().ok()
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        // Closing the channel stops the coordinator at its next send; its readers follow.
        let (_, closed) = bounded(0);
        self.batches = closed;
        if let Some(handle) = self.coordinator.take() {
            let _ = handle.join();
        }
    }
}

/// A row drawn for the CPU stage, with the stream's position just before and just after it.
struct Drawn {
    task: usize,
    item: Result<crate::Record, BadInput>,
    cursors_before: Vec<Cursor>,
    schedule_before: serde_json::Value,
    cursors_after: Vec<Cursor>,
    schedule_after: serde_json::Value,
}

/// The readers' cursors and the schedule's state at one point of the stream.
#[derive(Clone)]
struct Position {
    cursors: Vec<Cursor>,
    schedule: serde_json::Value,
}

/// A window of drawn rows, the CPU stage's results for them, and the position past the window.
struct Window {
    drawn: Vec<Drawn>,
    processed: Vec<Result<Example, BadInput>>,
    tail: Position,
}

struct Coordinator {
    config: StreamConfig,
    drawer: Drawer,
    /// The stream's state after the last example packed.
    state: StreamState,
    pool: rayon::ThreadPool,
}

type Sender = crossbeam_channel::Sender<Result<StreamBatch, PipelineError>>;

impl Coordinator {
    fn run(mut self, tx: Sender) {
        send_failure(&tx, || self.pump(&tx));
    }

    /// Several windows on the pool at once, so that workers done with their share of one take
    /// work from the next instead of idling at its tail; meanwhile this thread packs the window
    /// before them and draws the one after.
    fn pump(&mut self, tx: &Sender) -> Result<(), PipelineError> {
        let Coordinator {
            config,
            drawer,
            state,
            pool,
        } = self;
        let config = &*config;
        let mut packer = Packer::new(config.pack)?;
        let mut output = Output { state, tx };
        let end = pool.in_place_scope(|scope| {
            let mut in_flight = VecDeque::with_capacity(WINDOWS_ON_THE_POOL);
            let mut end = None;
            loop {
                while end.is_none() && in_flight.len() < WINDOWS_ON_THE_POOL {
                    let (drawn, tail) = drawer.draw_window();
                    if drawn.is_empty() {
                        end = Some(tail);
                        break;
                    }
                    let (send, processed) = bounded(1);
                    scope.spawn(move |_| {
                        let processed = process(config, &drawn);
                        let _ = send.send(Window {
                            drawn,
                            processed,
                            tail,
                        });
                    });
                    in_flight.push_back(processed);
                }
                let Some(next) = in_flight.pop_front() else {
                    return Ok(end.expect("drawing stops only at the end"));
                };
                // A job that panicked sends nothing; the scope then re-raises its panic.
                let Ok(window) = next.recv() else {
                    return Err(PipelineError::Closed);
                };
                output.pack(window, &mut packer, config)?;
            }
        })?;
        // Past the last row: a pass's end, a spent task, the stage's end.
        output.state.cursors = end.cursors;
        output.state.schedule = end.schedule;
        output.state.bad_inputs.check(&config.bad_input, true)?;
        if let Some(batch) = packer.flush() {
            // Everything drawn is in it: resuming after it starts after everything.
            let resume = output.state.clone();
            output.emit(batch, resume)?;
        }
        Ok(())
    }
}

/// Runs `work` and sends its error down `tx`. A panic (here or re-raised from the pool) is sent
/// as an error too: the channel closing alone would tell the consumer the stream had ended.
fn send_failure(tx: &Sender, work: impl FnOnce() -> Result<(), PipelineError>) {
    let failure = match catch_unwind(AssertUnwindSafe(work)) {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(panic) => {
            let message = (panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            PipelineError::Panicked(message)
        }
    };
    let _ = tx.send(Err(failure));
}

/// The CPU stage for a window, on the pool: decode, resize, tokenize, format, in draw order.
fn process(config: &StreamConfig, drawn: &[Drawn]) -> Vec<Result<Example, BadInput>> {
    thread_local! {
        // One per worker for the stream's life: its buffers and decoder are made once, not at
        // each of the pieces rayon splits a window into.
        static IMAGES: RefCell<ImageProcessor> = RefCell::new(ImageProcessor::new());
    }
    drawn
        .par_iter()
        .map(|d| {
            let record = d.item.as_ref().map_err(Clone::clone)?;
            let task = &config.tasks[d.task];
            let resolution = config.pack.resolution as u32;
            let pixels = IMAGES.with_borrow_mut(|images| {
                squares(images, record, task.visual_prompt.as_ref(), resolution)
            })?;
            task.formatter.format(
                &record.fields,
                pixels,
                record.location.clone(),
                &config.tokenizer,
            )
        })
        .collect()
}

/// A record's images, decoded, marked with the task's visual prompt if it has one, and resized.
fn squares(
    images: &mut ImageProcessor,
    record: &crate::Record,
    prompt: Option<&VisualPrompt>,
    resolution: u32,
) -> Result<Vec<SquareImage>, BadInput> {
    let mut squares = Vec::with_capacity(record.images.len());
    for image in &record.images {
        let at = record.location.with_column(&image.column);
        let bad = |e: ImageError| BadInput::new(e.reason(), at.clone(), e.to_string());
        let square = match prompt {
            None => images.square(&image.bytes, resolution).map_err(bad)?,
            Some(prompt) => {
                let mut rgb = images
                    .decode_rgb(&image.bytes, Some(resolution))
                    .map_err(bad)?;
                prompt.draw(&mut rgb, &record.fields).map_err(|e| {
                    let at = record.location.with_column(&prompt.field);
                    BadInput::new(Reason::BadTemplateValue, at, e)
                })?;
                let square = images.resize(&rgb, resolution).map_err(bad)?;
                images.recycle(rgb);
                square
            }
        };
        squares.push(square);
    }
    Ok(squares)
}

/// Packs processed windows in order and sends the batches, each with the state that resumes
/// right after it.
struct Output<'a> {
    state: &'a mut StreamState,
    tx: &'a Sender,
}

impl Output<'_> {
    fn pack(
        &mut self,
        window: Window,
        packer: &mut Packer,
        config: &StreamConfig,
    ) -> Result<(), PipelineError> {
        for (drawn, result) in window.drawn.into_iter().zip(window.processed) {
            let before = StreamState {
                cursors: drawn.cursors_before,
                schedule: drawn.schedule_before,
                ..self.state.clone()
            };
            self.state.cursors = drawn.cursors_after;
            self.state.schedule = drawn.schedule_after;
            match result {
                Ok(example) => {
                    if let Some(batch) = packer.push(example)? {
                        // This example starts the next batch: resuming before it replays it.
                        self.emit(batch, before)?;
                    }
                    let counters = &mut self.state.tasks[drawn.task];
                    counters.examples += 1;
                    counters.epoch = self.state.cursors[drawn.task].epoch;
                    self.state.examples += 1;
                    self.state.bad_inputs.record_good();
                }
                Err(bad) => self.state.bad_inputs.record_bad(bad),
            }
            self.state.bad_inputs.check(&config.bad_input, false)?;
        }
        // Past what the window took after its last row: a pass's end, a spent task, the
        // stage's end (so the last batch's state already belongs to the next stage).
        self.state.cursors = window.tail.cursors;
        self.state.schedule = window.tail.schedule;
        Ok(())
    }

    fn emit(&mut self, batch: Batch, mut resume: StreamState) -> Result<(), PipelineError> {
        self.state.batches += 1;
        resume.batches = self.state.batches;
        self.tx
            .send(Ok(StreamBatch {
                batch,
                state: resume,
            }))
            .map_err(|_| PipelineError::Closed)
    }
}

/// Draws rows from the readers in the schedule's order, a window at a time, ahead of packing.
struct Drawer {
    schedule: Box<dyn Schedule>,
    receivers: Vec<Option<mpsc::Receiver<SourceItem>>>,
    /// Past the last row drawn.
    position: Position,
    window: usize,
}

impl Drawer {
    /// Draws up to a window of rows in schedule order (empty once every task is spent), and
    /// the position after everything it consumed.
    fn draw_window(&mut self) -> (Vec<Drawn>, Position) {
        let mut drawn = Vec::with_capacity(self.window);
        let Position {
            mut cursors,
            schedule: mut schedule_before,
        } = self.position.clone();
        while drawn.len() < self.window {
            let Some(task) = self.schedule.next_task() else {
                break;
            };
            let received = self.receivers[task]
                .as_mut()
                .and_then(|rx| rx.blocking_recv());
            match received {
                Some(SourceItem::Row { item, after }) => {
                    let cursors_before = cursors.clone();
                    cursors[task] = after;
                    let schedule_after = self.schedule.state();
                    drawn.push(Drawn {
                        task,
                        item,
                        cursors_before,
                        schedule_before: std::mem::replace(
                            &mut schedule_before,
                            schedule_after.clone(),
                        ),
                        cursors_after: cursors.clone(),
                        schedule_after,
                    });
                }
                Some(SourceItem::EpochEnd { after }) => {
                    // Not a row: take the draw back, count the pass, and draw again.
                    self.schedule
                        .restore(&schedule_before)
                        .expect("a state it produced");
                    self.schedule.end_epoch(task);
                    cursors[task] = after;
                    schedule_before = self.schedule.state();
                }
                None => {
                    // The task's source has spent its epochs: take the draw back, drop the task.
                    self.schedule
                        .restore(&schedule_before)
                        .expect("a state it produced");
                    self.schedule.exhausted(task);
                    self.receivers[task] = None;
                    schedule_before = self.schedule.state();
                }
            }
        }
        self.position = Position {
            cursors,
            schedule: schedule_before,
        };
        (drawn, self.position.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::{PipelineError, bounded, send_failure};

    #[test]
    fn a_panic_reaches_the_consumer_as_an_error_not_as_the_end() {
        let (tx, rx) = bounded(2);
        send_failure(&tx, || panic!("boom in shard 3, row 7"));
        send_failure(&tx, || Err(PipelineError::Closed));
        send_failure(&tx, || Ok(()));
        drop(tx);
        match rx.recv() {
            Ok(Err(PipelineError::Panicked(message))) => {
                assert_eq!(message, "boom in shard 3, row 7")
            }
            _ => panic!("the panic was not sent as an error"),
        }
        assert!(matches!(rx.recv(), Ok(Err(PipelineError::Closed))));
        assert!(rx.recv().is_err(), "success sends nothing");
    }

    #[test]
    fn a_panic_on_the_pool_is_re_raised_on_the_coordinator_and_sent() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let (tx, rx) = bounded(1);
        send_failure(&tx, || {
            pool.in_place_scope(|scope| {
                scope.spawn(|_| panic!("in a worker"));
                Ok(())
            })
        });
        assert!(matches!(
            rx.recv(),
            Ok(Err(PipelineError::Panicked(message))) if message == "in a worker"
        ));
    }
}
