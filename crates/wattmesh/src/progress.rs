//! Progress bars for model pulls: one bar per model, bytes hashed and written, so a first
//! start that fetches a few hundred megabytes never looks hung.

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
