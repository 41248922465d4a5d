//! A notebook as one self-contained, offline HTML report: its markdown,
//! its code and its outputs, images inlined as `data:` URIs, styles
//! inline, no script, and a Content-Security-Policy that lets the page
//! load nothing from anywhere.
//!
//! No markup is copied from the file: markdown's raw HTML is shown as
//! text, tables are rebuilt from their data resource, KPI cards from their
//! values, and only PNG images (checked to be base64) are inlined, so that
//! a notebook from someone else cannot put active content in a report.

use std::fmt::Write as _;

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

use super::format::{Cell, MimeBundle, Notebook, Output};
use super::render::{self, escape_html, DATARESOURCE_MIME, KPI_MIME};

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1000px;\
margin:2em auto;padding:0 1em;color:#1f2328;line-height:1.5}\
h1,h2,h3{line-height:1.25}\
.meta{color:#57606a;font-size:13px;border-bottom:1px solid #d0d7de;padding-bottom:.8em}\
.cell{margin:1.2em 0}\
pre{background:#f6f8fa;border-radius:6px;padding:10px 12px;overflow-x:auto;font-size:13px;\
font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}\
pre.code{border-left:3px solid #0969da}\
.count{color:#57606a;font-size:12px;font-family:monospace}\
pre.stream{background:#fff;border:1px solid #eaeef2}\
pre.error{background:#ffebe9;color:#82071e}\
table.sp-frame{border-collapse:collapse;font-size:13px;margin:.4em 0}\
table.sp-frame th,table.sp-frame td{border-bottom:1px solid #eaeef2;padding:3px 10px;text-align:left}\
table.sp-frame th{border-bottom:2px solid #d0d7de}\
table.sp-frame .num{text-align:right;font-variant-numeric:tabular-nums}\
.sp-shape{color:#57606a;font-size:12px;margin:.2em 0}\
img{max-width:100%;height:auto}\
.output.kpi{display:inline-block;vertical-align:top}\
@media print{pre{white-space:pre-wrap}}";

/// Markdown as HTML, raw HTML in it shown as text.
pub fn markdown_html(text: &str) -> String {
    let mut opts = Options::empty();
    opts.insert(Options::ENABLE_TABLES);
    opts.insert(Options::ENABLE_STRIKETHROUGH);
    // Links and images keep their text, not their target: a report holds
    // no URL (no external resource, no `javascript:`) from the file.
    let events = Parser::new_ext(text, opts).filter_map(|e| match e {
        Event::Html(h) | Event::InlineHtml(h) => Some(Event::Text(h)),
        Event::Start(Tag::Link { .. } | Tag::Image { .. })
        | Event::End(TagEnd::Link | TagEnd::Image) => None,
        other => Some(other),
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

fn is_base64(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r'))
}

/// One output's bundle as report HTML: the richest type we can rebuild.
fn bundle_html(b: &MimeBundle) -> String {
    if let Some(png) = b.text("image/png").filter(|p| is_base64(p)) {
        let alt = b.text("text/plain").unwrap_or_default();
        let png: String = png.chars().filter(|c| !c.is_whitespace()).collect();
        return format!(
            "<img alt=\"{}\" src=\"data:image/png;base64,{png}\">",
            escape_html(&alt)
        );
    }
    if let Some(html) = b
        .json(DATARESOURCE_MIME)
        .and_then(render::html_from_resource)
    {
        return html;
    }
    if let Some(k) = render::Kpi::of(b) {
        if let Some(h) =
            render::kpi_bundle(&k.label, k.value, k.format, &k.currency).text("text/html")
        {
            return h;
        }
    }
    if let Some(md) = b.text("text/markdown") {
        return markdown_html(&md);
    }
    match b.text("text/plain") {
        Some(t) => format!("<pre class=\"result\">{}</pre>", escape_html(&t)),
        None => String::new(),
    }
}

/// The report of `nb`, titled `title`, noting `subtitle` under it (when
/// and how it ran).
pub fn html_report(nb: &Notebook, title: &str, subtitle: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         img-src data:; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"salespulse {}\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <p class=\"meta\">{}</p>\n",
        env!("CARGO_PKG_VERSION"),
        escape_html(title),
        escape_html(subtitle)
    );
    for cell in &nb.cells {
        match cell {
            Cell::Markdown(m) => {
                let _ = writeln!(
                    out,
                    "<div class=\"cell md\">{}</div>",
                    markdown_html(&m.source)
                );
            }
            Cell::Raw(r) => {
                let _ = writeln!(
                    out,
                    "<div class=\"cell\"><pre>{}</pre></div>",
                    escape_html(&r.source)
                );
            }
            Cell::Code(c) => {
                out.push_str("<div class=\"cell code\">\n");
                let count = c
                    .execution_count
                    .map_or_else(|| " ".to_owned(), |n| n.to_string());
                let _ = writeln!(
                    out,
                    "<div class=\"count\">[{count}]</div><pre class=\"code\">{}</pre>",
                    escape_html(&c.source)
                );
                for o in &c.outputs {
                    match o {
                        Output::Stream { name, text } => {
                            let _ = writeln!(
                                out,
                                "<pre class=\"stream {}\">{}</pre>",
                                if name == "stderr" { "stderr" } else { "stdout" },
                                escape_html(text)
                            );
                        }
                        Output::DisplayData { data, .. } | Output::ExecuteResult { data, .. } => {
                            // KPI cards sit side by side.
                            let class = if data.json(KPI_MIME).is_some() {
                                "output kpi"
                            } else {
                                "output"
                            };
                            let _ =
                                writeln!(out, "<div class=\"{class}\">{}</div>", bundle_html(data));
                        }
                        Output::Error { traceback, .. } => {
                            let _ = writeln!(
                                out,
                                "<pre class=\"error\">{}</pre>",
                                escape_html(&traceback.join("\n"))
                            );
                        }
                    }
                }
                out.push_str("</div>\n");
            }
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_keeps_no_markup_from_the_file() {
        let mut nb = Notebook::new();
        nb.cells.push(Cell::markdown(
            "# Sales <script>alert(1)</script>\n\n<img src=\"http://x.example/a.png\">\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[click](javascript:alert(3)) ![pixel](https://tracker.example/p.png) [site](https://x.example)",
        ));
        let mut evil = MimeBundle::default();
        evil.set_text("text/html", "<script>alert(2)</script>");
        evil.set_text("text/plain", "<b>plain</b>");
        evil.set_text("image/png", "not base64 <script>");
        let mut cell = Cell::code("display(x)");
        if let Cell::Code(c) = &mut cell {
            c.outputs.push(Output::DisplayData {
                data: evil,
                metadata: serde_json::Map::new(),
            });
        }
        nb.cells.push(cell);
        let html = html_report(&nb, "T <x>", "run");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img src=\"http"), "{html}");
        assert!(
            !html.contains("javascript:") && !html.contains("https://"),
            "{html}"
        );
        assert!(html.contains("click") && html.contains("pixel") && html.contains("site"));
        assert!(html.contains("&lt;b&gt;plain&lt;/b&gt;"));
        assert!(html.contains("<title>T &lt;x&gt;</title>"));
        assert!(html.contains("<table>"), "markdown tables render: {html}");
        assert!(html.contains("default-src 'none'"));
    }
}
