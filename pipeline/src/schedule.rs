//! Which task supplies the stream's next example. The mixture's weighted sampler is the real
//! schedule; the stream sees only this trait, so its state travels inside [`StreamState`].
//!
//! [`StreamState`]: crate::stream::StreamState

use crate::PipelineError;

pub trait Schedule: Send {
    /// The next task, or `None` once every task is spent.
    fn next_task(&mut self) -> Option<usize>;
    /// `task`'s source has finished a pass over its rows.
    fn end_epoch(&mut self, task: usize);
    /// `task`'s source has spent its epochs: never draw it again.
    fn exhausted(&mut self, task: usize);
    fn state(&self) -> serde_json::Value;
    fn restore(&mut self, state: &serde_json::Value) -> Result<(), PipelineError>;
}

/// One task, always: for previews and benchmarks of a single dataset.
#[derive(Debug, Default)]
pub struct SingleTask {
    spent: bool,
}

impl Schedule for SingleTask {
    fn next_task(&mut self) -> Option<usize> {
        (!self.spent).then_some(0)
    }

    fn end_epoch(&mut self, _task: usize) {}

    fn exhausted(&mut self, _task: usize) {
        self.spent = true;
    }

    fn state(&self) -> serde_json::Value {
        serde_json::Value::Bool(self.spent)
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), PipelineError> {
        self.spent = state
            .as_bool()
            .ok_or_else(|| PipelineError::State(format!("expected a bool, got {state}")))?;
        Ok(())
    }
}
