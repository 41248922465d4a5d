//! Rhai source as coloured text: a small tokenizer (comments, strings,
//! numbers, keywords, the salespulse functions) into an egui `LayoutJob`,
//! with the line of an error shaded.

use egui::text::{LayoutJob, TextFormat};
use egui::{Color32, FontId};

/// What a piece of source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    /// A `//` or `/* */` comment.
    Comment,
    /// A string or character literal.
    Str,
    /// A number literal.
    Number,
    /// A Rhai keyword.
    Keyword,
    /// A function salespulse adds (`col`, `view`, `sql`, …).
    Builtin,
    /// A `const` the metric header reads (`NAME`, `KIND`, …).
    Header,
    /// Anything else.
    Plain,
}

const KEYWORDS: [&str; 27] = [
    "let", "const", "fn", "if", "else", "while", "loop", "for", "in", "do", "until", "return",
    "break", "continue", "true", "false", "switch", "throw", "try", "catch", "this", "import",
    "export", "as", "private", "global", "Fn",
];

/// The functions of `scripts/README.md`.
pub(crate) const BUILTINS: [&str; 69] = [
    "view",
    "table",
    "transactions",
    "sessions",
    "sql",
    "register",
    "frame",
    "col",
    "lit",
    "len",
    "when",
    "then",
    "otherwise",
    "sum",
    "mean",
    "min",
    "max",
    "median",
    "count",
    "n_unique",
    "first",
    "last",
    "std",
    "quantile",
    "alias",
    "round",
    "abs",
    "cast",
    "fill_null",
    "is_in",
    "is_null",
    "is_not_null",
    "cum_sum",
    "truncate",
    "hour",
    "minute",
    "weekday",
    "day",
    "month",
    "year",
    "date",
    "over",
    "filter",
    "select",
    "with_columns",
    "with_column",
    "group_by",
    "agg",
    "sort",
    "head",
    "tail",
    "join",
    "pivot",
    "rfm",
    "kmeans",
    "forecast",
    "decompose",
    "backtest",
    "anomalies",
    "changepoints",
    "unique",
    "rename",
    "drop",
    "column",
    "value",
    "item",
    "rows",
    "to_array",
    "to_float",
];

const HEADER: [&str; 4] = ["NAME", "KIND", "FORMAT", "DESCRIPTION"];

/// Splits `src` into tokens (byte ranges cover all of it, in order).
pub(crate) fn tokens(src: &str) -> Vec<(std::ops::Range<usize>, Token)> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut plain_from = 0;
    let flush = |out: &mut Vec<_>, from: usize, to: usize| {
        if to > from {
            out.push((from..to, Token::Plain));
        }
    };
    let at = |i: usize| b.get(i).copied();
    while let Some(c) = at(i) {
        let start = i;
        let tok = if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while at(i).is_some_and(|x| x != b'\n') {
                i += 1;
            }
            Some(Token::Comment)
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while at(i).is_some_and(|x| !(x == b'*' && at(i + 1) == Some(b'/'))) {
                i += 1;
            }
            i = (i + 2).min(b.len());
            Some(Token::Comment)
        } else if c == b'"' || c == b'`' || c == b'\'' {
            i += 1;
            while let Some(x) = at(i).filter(|x| *x != c) {
                if x == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
            Some(Token::Str)
        } else if c.is_ascii_digit() {
            while let Some(x) =
                at(i).filter(|x| x.is_ascii_alphanumeric() || *x == b'.' || *x == b'_')
            {
                // `1..5` is a range, not a number.
                if x == b'.' && at(i + 1) == Some(b'.') {
                    break;
                }
                i += 1;
            }
            Some(Token::Number)
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while at(i).is_some_and(|x| x.is_ascii_alphanumeric() || x == b'_') {
                i += 1;
            }
            let w = &src[start..i];
            Some(if KEYWORDS.contains(&w) {
                Token::Keyword
            } else if HEADER.contains(&w) {
                Token::Header
            } else if BUILTINS.contains(&w) && b.get(i) == Some(&b'(') {
                Token::Builtin
            } else {
                Token::Plain
            })
        } else {
            // Multi-byte characters stay whole.
            i += src[i..].chars().next().map_or(1, char::len_utf8);
            None
        };
        if let Some(t) = tok {
            if t == Token::Plain {
                continue;
            }
            flush(&mut out, plain_from, start);
            out.push((start..i, t));
            plain_from = i;
        }
    }
    flush(&mut out, plain_from, b.len());
    out
}

fn color(t: Token, dark: bool) -> Color32 {
    let (d, l) = match t {
        Token::Comment => ((0x7f, 0x8c, 0x8d), (0x6a, 0x73, 0x7d)),
        Token::Str => ((0xa3, 0xd9, 0x8b), (0x22, 0x86, 0x3a)),
        Token::Number => ((0xf5, 0xab, 0x6b), (0xb3, 0x5c, 0x00)),
        Token::Keyword => ((0xc5, 0x92, 0xf0), (0x8a, 0x2b, 0xb9)),
        Token::Builtin => ((0x7c, 0xc4, 0xf5), (0x00, 0x5c, 0xc5)),
        Token::Header => ((0xf2, 0xd0, 0x6b), (0x9a, 0x67, 0x00)),
        Token::Plain => ((0xdd, 0xdd, 0xdd), (0x24, 0x29, 0x2e)),
    };
    let (r, g, b) = if dark { d } else { l };
    Color32::from_rgb(r, g, b)
}

/// `src` coloured; `error_line` (1-based) shaded.
pub(crate) fn highlight(
    src: &str,
    dark: bool,
    font: FontId,
    error_line: Option<usize>,
) -> LayoutJob {
    let mut job = LayoutJob::default();
    let [on_dark, on_light] = super::widgets::ERROR_SHADE;
    let shade = if dark { on_dark } else { on_light };
    // Byte range of the error line.
    let err = error_line.and_then(|l| {
        let mut start = 0;
        for (n, line) in src.split_inclusive('\n').enumerate() {
            if n + 1 == l {
                return Some(start..start + line.len());
            }
            start += line.len();
        }
        None
    });
    for (range, tok) in tokens(src) {
        // Split at the error line's bounds so only it is shaded.
        let mut cuts = vec![range.start, range.end];
        if let Some(e) = &err {
            for p in [e.start, e.end] {
                if p > range.start && p < range.end {
                    cuts.push(p);
                }
            }
        }
        cuts.sort_unstable();
        for w in cuts.windows(2) {
            let &[a, b] = w else { continue };
            let on_error = err.as_ref().is_some_and(|e| a >= e.start && b <= e.end);
            job.append(
                &src[a..b],
                0.0,
                TextFormat {
                    font_id: font.clone(),
                    color: color(tok, dark),
                    background: if on_error {
                        shade
                    } else {
                        Color32::TRANSPARENT
                    },
                    ..Default::default()
                },
            );
        }
    }
    job
}

/// The last highlighted text of an editor (by hash, theme and error
/// line), so that typing re-colours only when the text changed.
pub(crate) type HighlightCache = Option<(u64, bool, Option<usize>, LayoutJob)>;

/// A Rhai code editor: line numbers, highlighting, `error_line` shaded.
/// With `max_height` it scrolls inside that height; without it, it grows
/// with its text (a notebook cell inside the notebook's scroll area).
pub(crate) fn editor_ui(
    ui: &mut egui::Ui,
    id: egui::Id,
    text: &mut String,
    error_line: Option<usize>,
    cache: &mut HighlightCache,
    max_height: Option<f32>,
) -> egui::Response {
    let dark = ui.visuals().dark_mode;
    let font = egui::TextStyle::Monospace.resolve(ui.style());
    let lines = text.split('\n').count().max(1);
    let digits = lines.to_string().len().max(2);
    let numbers: String = (1..=lines)
        .map(|n| format!("{n:>digits$}"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut layouter = |ui: &egui::Ui, buf: &dyn egui::TextBuffer, _wrap: f32| {
        let text = buf.as_str();
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            text.hash(&mut h);
            h.finish()
        };
        let job = match cache {
            Some((h, d, l, job)) if *h == hash && *d == dark && *l == error_line => job.clone(),
            _ => {
                let job = highlight(text, dark, font.clone(), error_line);
                *cache = Some((hash, dark, error_line, job.clone()));
                job
            }
        };
        let mut job = job;
        job.wrap.max_width = f32::INFINITY;
        ui.fonts_mut(|f| f.layout_job(job))
    };
    let body = |ui: &mut egui::Ui| {
        ui.horizontal_top(|ui| {
            ui.add(
                egui::Label::new(
                    egui::RichText::new(numbers)
                        .font(font.clone())
                        .color(ui.visuals().weak_text_color()),
                )
                .selectable(false),
            );
            ui.add(
                egui::TextEdit::multiline(text)
                    .id(id)
                    .code_editor()
                    .desired_rows(if max_height.is_some() { 20 } else { 1 })
                    .desired_width(f32::INFINITY)
                    .lock_focus(true)
                    .frame(egui::Frame::NONE)
                    .layouter(&mut layouter),
            )
        })
        .inner
    };
    egui::Frame::group(ui.style())
        .show(ui, |ui| match max_height {
            Some(h) => {
                egui::ScrollArea::both()
                    .id_salt(id.with("scroll"))
                    .max_height(h)
                    .auto_shrink([false, false])
                    .show(ui, body)
                    .inner
            }
            None => {
                egui::ScrollArea::horizontal()
                    .id_salt(id.with("scroll"))
                    .show(ui, body)
                    .inner
            }
        })
        .inner
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<(&str, Token)> {
        tokens(src)
            .into_iter()
            .map(|(r, t)| (&src[r], t))
            .filter(|(s, _)| !s.trim().is_empty())
            .collect()
    }

    #[test]
    fn tokens_cover_the_source_and_classify() {
        let src =
            "const NAME = \"x\"; // hi\nlet n = col(\"a\").sum() * 2.5;\n/* c */ for i in 1..5 {}";
        let t = tokens(src);
        let joined: String = t.iter().map(|(r, _)| &src[r.clone()]).collect();
        assert_eq!(joined, src);
        let k = kinds(src);
        assert!(k.contains(&("const", Token::Keyword)));
        assert!(k.contains(&("NAME", Token::Header)));
        assert!(k.contains(&("\"x\"", Token::Str)));
        assert!(k.contains(&("// hi", Token::Comment)));
        assert!(k.contains(&("col", Token::Builtin)));
        assert!(k.contains(&("sum", Token::Builtin)));
        assert!(k.contains(&("2.5", Token::Number)));
        assert!(k.contains(&("/* c */", Token::Comment)));
        assert!(k.contains(&("1", Token::Number)));
        assert!(k.contains(&("5", Token::Number)));
    }

    #[test]
    fn unterminated_strings_and_unicode_do_not_break_it() {
        for src in [
            "let s = \"open",
            "let é = `x ${y}` + 'c'",
            "/* never closed",
            "\\",
        ] {
            let t = tokens(src);
            let joined: String = t.iter().map(|(r, _)| &src[r.clone()]).collect();
            assert_eq!(joined, src);
        }
    }

    #[test]
    fn only_the_error_line_is_shaded() {
        let job = highlight(
            "let a = 1;\nlet b = ;\nlet c = 3;",
            true,
            FontId::monospace(12.0),
            Some(2),
        );
        let shaded: String = job
            .sections
            .iter()
            .filter(|s| s.format.background != Color32::TRANSPARENT)
            .map(|s| &job.text[s.byte_range.start.0..s.byte_range.end.0])
            .collect();
        assert_eq!(shaded, "let b = ;\n");
    }
}
