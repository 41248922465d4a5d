//! Toasts: short messages in the window's bottom-right corner. Each is one
//! line (the whole message on hover), alike messages are grouped into one
//! toast with a count, and each expires by itself (errors last longest).

use std::time::{Duration, Instant};

use egui::RichText;

use super::widgets;

/// Toasts shown at once; past it the oldest of the least severe goes.
pub(crate) const MAX_TOASTS: usize = 4;
/// Width of a toast, points.
pub(crate) const TOAST_WIDTH: f32 = 380.0;
/// Messages of a group listed on hover.
const MAX_LISTED: usize = 8;

/// How long a toast of `level` stays.
fn lifetime(level: tracing::Level) -> Duration {
    match level {
        tracing::Level::ERROR => Duration::from_secs(10),
        tracing::Level::WARN => Duration::from_secs(8),
        _ => Duration::from_secs(4),
    }
}

/// `subject: cause` split at the first `": "` (`None` without one).
fn split(text: &str) -> Option<(&str, &str)> {
    text.split_once(": ")
        .filter(|(s, c)| !s.is_empty() && !c.is_empty())
}

/// One toast: a message, or a group of alike ones.
pub(crate) struct Toast {
    /// How it is coloured.
    pub level: tracing::Level,
    /// The distinct messages of the group, oldest first (at most
    /// [`MAX_LISTED`]).
    pub messages: Vec<String>,
    /// Messages grouped here, repeats included.
    pub count: u32,
    /// When it goes away.
    pub until: Instant,
}

impl Toast {
    /// Whether `text` belongs to this group: the same message, or the same
    /// cause (what follows `subject: `) for another subject.
    fn takes(&self, level: tracing::Level, text: &str) -> bool {
        if self.level != level {
            return false;
        }
        let Some(first) = self.messages.first() else {
            return false;
        };
        first == text
            || matches!((split(first), split(text)), (Some((_, a)), Some((_, b))) if a == b)
    }

    /// The one line the toast shows.
    pub fn line(&self) -> String {
        let text = match (
            self.messages.as_slice(),
            self.messages.first().and_then(|m| split(m)),
        ) {
            ([one], _) | ([one, ..], None) => one.clone(),
            (many, Some((_, cause))) => {
                let subjects: Vec<&str> = many
                    .iter()
                    .filter_map(|m| split(m).map(|(s, _)| s))
                    .collect();
                format!("{cause} ({})", subjects.join(", "))
            }
            ([], None) => String::new(),
        };
        if self.count > 1 {
            format!("{}× {text}", self.count)
        } else {
            text
        }
    }
}

/// The toasts on screen.
#[derive(Default)]
pub(crate) struct Toasts {
    items: Vec<Toast>,
}

impl Toasts {
    /// Shows `text`, or adds it to an alike toast (which moves to the end
    /// and lives longer).
    pub fn push(&mut self, level: tracing::Level, text: String, now: Instant) {
        let until = now + lifetime(level);
        if let Some(i) = self.items.iter().position(|t| t.takes(level, &text)) {
            let mut t = self.items.remove(i);
            t.count += 1;
            t.until = until;
            if !t.messages.contains(&text) && t.messages.len() < MAX_LISTED {
                t.messages.push(text);
            }
            self.items.push(t);
        } else {
            self.items.push(Toast {
                level,
                messages: vec![text],
                count: 1,
                until,
            });
        }
        // Over the cap, the oldest of the least severe goes: an error is
        // not pushed out by confirmations.
        while self.items.len() > MAX_TOASTS {
            let rank = |l: tracing::Level| match l {
                tracing::Level::ERROR => 2,
                tracing::Level::WARN => 1,
                _ => 0,
            };
            let least = self.items.iter().map(|t| rank(t.level)).min().unwrap_or(0);
            match self.items.iter().position(|t| rank(t.level) == least) {
                Some(i) => {
                    self.items.remove(i);
                }
                None => break,
            }
        }
    }

    /// Drops the expired toasts; returns how long until the next one
    /// expires (to wake the window then).
    pub fn expire(&mut self, now: Instant) -> Option<Duration> {
        self.items.retain(|t| t.until > now);
        self.items.iter().map(|t| t.until - now).min()
    }

    /// The toasts, oldest first.
    #[cfg(test)]
    pub fn items(&self) -> &[Toast] {
        &self.items
    }

    /// Draws the toasts; `×` dismisses one.
    pub fn toasts_ui(&mut self, ctx: &egui::Context) {
        if self.items.is_empty() {
            return;
        }
        egui::Area::new(egui::Id::unique("toasts"))
            .anchor(egui::Align2::RIGHT_BOTTOM, egui::vec2(-12.0, -36.0))
            .order(egui::Order::Foreground)
            .interactable(true)
            .show(ctx, |ui| {
                let mut dismiss = None;
                for (i, t) in self.items.iter().enumerate() {
                    let color = match t.level {
                        tracing::Level::ERROR => widgets::RED,
                        tracing::Level::WARN => widgets::AMBER,
                        _ => widgets::BLUE,
                    };
                    egui::Frame::popup(ui.style())
                        .stroke(egui::Stroke::new(1.0, color))
                        .show(ui, |ui| {
                            ui.set_width(TOAST_WIDTH);
                            ui.horizontal(|ui| {
                                ui.colored_label(color, t.level.as_str());
                                if ui.small_button("×").on_hover_text("Dismiss").clicked() {
                                    dismiss = Some(i);
                                }
                                let line = ui.add(
                                    egui::Label::new(RichText::new(t.line()).small()).truncate(),
                                );
                                line.on_hover_ui(|ui| {
                                    ui.set_max_width(560.0);
                                    for m in &t.messages {
                                        ui.label(m);
                                    }
                                    if t.count as usize > t.messages.len() {
                                        ui.label(
                                            RichText::new(format!("{} times in all", t.count))
                                                .weak(),
                                        );
                                    }
                                });
                            });
                        });
                }
                if let Some(i) = dismiss {
                    self.items.remove(i);
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egui_kittest::kittest::Queryable;
    use tracing::Level;

    const TIMEOUT: &str = "canceling statement due to statement timeout";

    #[test]
    fn alike_messages_group_and_each_group_expires() {
        let t0 = Instant::now();
        let mut toasts = Toasts::default();
        for script in ["a.rhai", "b.rhai", "c.rhai", "d.rhai"] {
            toasts.push(Level::ERROR, format!("metrics/{script}: {TIMEOUT}"), t0);
        }
        toasts.push(Level::INFO, "saved metrics/a.rhai".into(), t0);
        toasts.push(Level::INFO, "saved metrics/a.rhai".into(), t0);
        // Same cause at another level, and another cause: their own toasts.
        toasts.push(Level::WARN, format!("metrics/a.rhai: {TIMEOUT}"), t0);
        let lines: Vec<String> = toasts.items().iter().map(Toast::line).collect();
        assert_eq!(
            lines,
            [
                format!(
                    "4× {TIMEOUT} (metrics/a.rhai, metrics/b.rhai, metrics/c.rhai, metrics/d.rhai)"
                ),
                "2× saved metrics/a.rhai".to_owned(),
                format!("metrics/a.rhai: {TIMEOUT}"),
            ]
        );
        // Info goes first, then the warning, then the error.
        assert_eq!(
            toasts.expire(t0 + Duration::from_secs(5)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(toasts.items().len(), 2);
        toasts.expire(t0 + Duration::from_secs(9));
        assert_eq!(toasts.items().len(), 1);
        assert_eq!(toasts.expire(t0 + Duration::from_secs(10)), None);
        assert!(toasts.items().is_empty());
    }

    #[test]
    fn a_repeat_keeps_its_group_alive_and_at_most_four_show() {
        let t0 = Instant::now();
        let mut toasts = Toasts::default();
        toasts.push(Level::ERROR, "services unavailable: refused".into(), t0);
        for i in 0..5 {
            toasts.push(Level::INFO, format!("exported {i} rows"), t0);
        }
        // Confirmations do not push the error out; the oldest of them go.
        assert_eq!(toasts.items().len(), MAX_TOASTS);
        assert_eq!(toasts.items()[0].level, Level::ERROR);
        assert_eq!(toasts.items()[1].line(), "exported 2 rows");
        toasts.push(Level::ERROR, "services unavailable: refused".into(), t0);
        let later = t0 + Duration::from_secs(8);
        toasts.push(Level::ERROR, "services unavailable: refused".into(), later);
        toasts.expire(t0 + Duration::from_secs(12));
        // The error outlived its first 10 s: each repeat renews it.
        assert_eq!(toasts.items().len(), 1);
        let t = toasts.items().last().unwrap();
        assert_eq!(t.count, 3);
        assert_eq!(t.line(), "3× services unavailable: refused");
    }

    #[test]
    fn a_long_message_is_one_line_and_whole_on_hover() {
        let long = format!(
            "metrics/repeat_buyers.rhai: {TIMEOUT}; raise pg_statement_timeout_ms in Settings \
             or narrow the range: the script loads raw transactions over 90 days"
        );
        let mut toasts = Toasts::default();
        toasts.push(Level::ERROR, long.clone(), Instant::now());
        toasts.push(
            Level::ERROR,
            format!("metrics/top_regions.rhai: {TIMEOUT}"),
            Instant::now(),
        );
        let mut h = egui_kittest::Harness::builder()
            .with_size(egui::vec2(1024.0, 640.0))
            .build_ui_state(|ui, t: &mut Toasts| t.toasts_ui(ui.ctx()), toasts);
        h.run();
        let shown = |h: &egui_kittest::Harness<'_, Toasts>| h.query_all_by_label(&long).count();
        let before = shown(&h);
        {
            let line = h
                .query_all_by_label_contains("repeat_buyers")
                .next()
                .unwrap();
            // One line of small text, no wider than the toast.
            assert!(line.rect().height() < 20.0, "{:?}", line.rect());
            assert!(line.rect().width() <= TOAST_WIDTH);
            line.hover();
        }
        h.run();
        assert!(shown(&h) > before, "the whole message on hover");
        assert!(h
            .query_all_by_label_contains("top_regions")
            .next()
            .is_some());
    }
}
