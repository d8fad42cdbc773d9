//! Progress bars: model pulls (one bar per model, bytes hashed and written, so a first start
//! that fetches a few hundred megabytes never looks hung) and long computations in steps.

use std::collections::HashMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use wattmesh_agent::PullProgress;

pub struct PullBars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl PullBars {
    pub fn new() -> Self {
        // indicatif hides itself when stderr is not a terminal; logs and tests stay clean.
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn bar(&self, model: &str) -> ProgressBar {
        let mut bars = match self.bars.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        bars.entry(model.to_owned())
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(0));
                if let Ok(style) = ProgressStyle::with_template(
                    "{prefix:>24} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_prefix(model.to_owned());
                bar
            })
            .clone()
    }
}

impl PullProgress for PullBars {
    fn stage(&self, model: &str, message: &str) {
        let bar = self.bar(model);
        bar.set_message(message.to_owned());
        if !bar.is_hidden() {
            return;
        }
        // Without a terminal, say each stage once on stderr instead of drawing.
        eprintln!("{model}: {message}");
    }

    fn bytes(&self, model: &str, done: u64, total: u64) {
        let bar = self.bar(model);
        bar.set_length(total);
        bar.set_position(done);
    }

    fn done(&self, model: &str) {
        let bar = self.bar(model);
        bar.finish_with_message("ready");
        if bar.is_hidden() {
            eprintln!("{model}: ready");
        }
    }
}

/// A bar of `len` named steps on stderr (hidden when stderr is not a terminal).
pub fn steps(what: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {prefix} [{pos}/{len}] {msg} {elapsed}")
    {
        bar.set_style(style);
    }
    bar.set_prefix(what.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
