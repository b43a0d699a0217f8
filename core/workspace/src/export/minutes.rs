//! A meeting's minutes as Markdown (CommonMark) and HTML.
//!
//! Both leave out every passage marked off the record: the words are dropped, not hidden,
//! and a paragraph or heading with nothing left on the record is dropped whole. Headings,
//! bulleted and numbered lists, bold, italic and links are kept. Links are only rendered
//! for `http:`, `https:` and `mailto:` targets; any other link (e.g. `javascript:`) becomes
//! its plain text. Text is escaped so nothing a member typed can become markup.

use automerge::ReadDoc;
use thiserror::Error;

use crate::model::meeting::{self, MeetingError};
use crate::model::minutes::{self, BlockKind, RichText};

/// Which version of the minutes to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The minutes as they are now (a draft, or changed since agreed).
    Current,
    /// The version the group agreed.
    Agreed,
}

/// Why an export failed.
#[derive(Debug, Error)]
pub enum ExportError {
    /// The meeting or its minutes could not be read (minutes errors arrive as
    /// [`MeetingError::Minutes`]).
    /// Boxed: automerge's errors are large, and this one travels up through app code.
    #[error(transparent)]
    Meeting(Box<MeetingError>),
    /// The agreed version was asked for, but the minutes have not been agreed.
    #[error("the minutes have not been agreed yet")]
    NotAgreed,
}

impl From<MeetingError> for ExportError {
    fn from(e: MeetingError) -> Self {
        ExportError::Meeting(Box::new(e))
    }
}

fn read(doc: &impl ReadDoc, version: Version) -> Result<RichText, ExportError> {
    match version {
        Version::Current => Ok(minutes::read_minutes(doc).map_err(MeetingError::from)?),
        Version::Agreed => meeting::agreed_minutes_text(doc)?.ok_or(ExportError::NotAgreed),
    }
}

/// The meeting's minutes as Markdown.
pub fn markdown(doc: &impl ReadDoc, version: Version) -> Result<String, ExportError> {
    Ok(to_markdown(&read(doc, version)?))
}

/// The meeting's minutes as an HTML fragment (block elements, UTF-8).
pub fn html(doc: &impl ReadDoc, version: Version) -> Result<String, ExportError> {
    Ok(to_html(&read(doc, version)?))
}

/// One character of on-the-record text with its style.
#[derive(Clone, Debug, PartialEq)]
struct Styled {
    ch: char,
    bold: bool,
    italic: bool,
    /// A link target that passed [`safe_url`].
    link: Option<String>,
}

/// A paragraph with only its on-the-record text.
struct OnRecord {
    kind: BlockKind,
    chars: Vec<Styled>,
}

/// The link targets worth rendering: web and mail links. Everything else (`javascript:`,
/// `data:`, relative paths, app schemes) is rendered as plain text.
fn safe_url(url: &str) -> Option<String> {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    let allowed = ["http://", "https://", "mailto:"]
        .iter()
        .any(|p| lower.starts_with(p) && lower.len() > p.len());
    (allowed && !url.chars().any(char::is_control)).then(|| url.to_owned())
}

fn on_record(rich: &RichText) -> Vec<OnRecord> {
    let mut out = Vec::new();
    for paragraph in rich.paragraphs() {
        let mut chars = Vec::new();
        for run in paragraph.runs.iter().filter(|r| !r.marks.off_record) {
            let link = run.marks.link.as_deref().and_then(safe_url);
            for ch in run.text.chars() {
                // A heading is one line.
                let ch = if ch == '\n' && matches!(paragraph.kind, BlockKind::Heading(_)) {
                    ' '
                } else {
                    ch
                };
                chars.push(Styled {
                    ch,
                    bold: run.marks.bold,
                    italic: run.marks.italic,
                    link: link.clone(),
                });
            }
        }
        // Trim whitespace at both ends (it would change the Markdown's meaning).
        while chars.last().is_some_and(|c| c.ch.is_whitespace()) {
            chars.pop();
        }
        let lead = chars.iter().take_while(|c| c.ch.is_whitespace()).count();
        chars.drain(..lead);
        if !chars.is_empty() {
            out.push(OnRecord {
                kind: paragraph.kind,
                chars,
            });
        }
    }
    out
}

/// Consecutive characters with the same style.
fn segments(chars: &[Styled]) -> Vec<(String, &Styled)> {
    let mut segs: Vec<(String, &Styled)> = Vec::new();
    for c in chars {
        match segs.last_mut() {
            Some((text, style))
                if style.bold == c.bold && style.italic == c.italic && style.link == c.link =>
            {
                text.push(c.ch)
            }
            _ => segs.push((c.ch.to_string(), c)),
        }
    }
    segs
}

/// A run of text with one style.
type Segment<'a> = (String, &'a Styled);

/// Consecutive segments with the same link (or none).
fn link_groups<'a>(segs: &'a [Segment<'a>]) -> Vec<(Option<&'a str>, &'a [Segment<'a>])> {
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=segs.len() {
        if i == segs.len() || segs[i].1.link != segs[start].1.link {
            groups.push((segs[start].1.link.as_deref(), &segs[start..i]));
            start = i;
        }
    }
    groups
}

// ---------------------------------------------------------------------------------------
// Markdown

#[derive(Clone, Copy, PartialEq, Eq)]
enum Emphasis {
    Bold = 0,
    Italic = 1,
}

impl Emphasis {
    fn delimiter(self) -> &'static str {
        match self {
            Emphasis::Bold => "**",
            Emphasis::Italic => "*",
        }
    }
}

/// CommonMark emphasis may not start or end with whitespace: whitespace at the edge of a
/// bold or italic stretch is moved outside it.
fn unstyle_edge_whitespace(chars: &mut [Styled]) {
    let len = chars.len();
    let mut i = 0;
    while i < len {
        if !chars[i].ch.is_whitespace() {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < len && chars[j].ch.is_whitespace() {
            j += 1;
        }
        let before = i.checked_sub(1).map(|k| (chars[k].bold, chars[k].italic));
        let after = (j < len).then(|| (chars[j].bold, chars[j].italic));
        let bold_inside = before.is_some_and(|b| b.0) && after.is_some_and(|a| a.0);
        let italic_inside = before.is_some_and(|b| b.1) && after.is_some_and(|a| a.1);
        for c in &mut chars[i..j] {
            c.bold &= bold_inside;
            c.italic &= italic_inside;
        }
        i = j;
    }
}

/// Escapes typed text for Markdown. `line_start` tracks whether the next character begins
/// a line (where `#`, `-`, `+`, `=`, `1.` would start a block) and is updated.
struct MdText<'a> {
    out: &'a mut String,
    /// Indentation for continuation lines inside a list item.
    indent: usize,
    line_start: bool,
    /// The current line so far is only digits (a `1.` list marker in the making).
    digits_only: bool,
}

impl MdText<'_> {
    fn push_text(&mut self, text: &str) {
        for ch in text.chars() {
            if ch == '\n' {
                // A hard line break inside the paragraph.
                self.out.push_str("\\\n");
                self.out.extend(std::iter::repeat_n(' ', self.indent));
                self.line_start = true;
                self.digits_only = true;
                continue;
            }
            if self.line_start && (ch == ' ' || ch == '\t') {
                // Leading spaces would make an indented code block.
                continue;
            }
            let at_start = self.line_start;
            self.line_start = false;
            let escape = match ch {
                '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '&' | '!' | '|' | '~' | '#' => {
                    true
                }
                '-' | '+' | '=' => at_start,
                '.' | ')' => self.digits_only && !at_start,
                _ => false,
            };
            self.digits_only = self.digits_only && ch.is_ascii_digit();
            if escape {
                self.out.push('\\');
            }
            self.out.push(ch);
        }
    }

    fn push_markup(&mut self, markup: &str) {
        self.out.push_str(markup);
        self.line_start = false;
        self.digits_only = false;
    }
}

/// Percent-encodes what would end or confuse a Markdown link destination.
fn md_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for ch in url.chars() {
        match ch {
            ' ' | '<' | '>' | '(' | ')' | '\\' | '"' | '`' | '*' | '_' | '[' | ']' => {
                out.push_str(&format!("%{:02X}", ch as u32));
            }
            _ => out.push(ch),
        }
    }
    out
}

fn md_inline(chars: &mut [Styled], out: &mut String, indent: usize) {
    unstyle_edge_whitespace(chars);
    let segs = segments(chars);
    let mut md = MdText {
        out,
        indent,
        line_start: true,
        digits_only: true,
    };
    for (link, group) in link_groups(&segs) {
        if link.is_some() {
            md.push_markup("[");
        }
        // Where each emphasis run ends, so the longer-lasting one opens first (outermost)
        // and fewer runs need closing and reopening around an inner one.
        let mut run_end = vec![[0usize; 2]; group.len()];
        for i in (0..group.len()).rev() {
            for (f, on) in [group[i].1.bold, group[i].1.italic].into_iter().enumerate() {
                run_end[i][f] = match (on, run_end.get(i + 1)) {
                    (false, _) => i,
                    (true, Some(next)) if next[f] > i + 1 => next[f],
                    (true, _) => i + 1,
                };
            }
        }
        let mut open: Vec<Emphasis> = Vec::new();
        for (i, (text, style)) in group.iter().enumerate() {
            let wanted = |e: Emphasis| match e {
                Emphasis::Bold => style.bold,
                Emphasis::Italic => style.italic,
            };
            // Close from the innermost down to the first one no longer wanted.
            if let Some(k) = open.iter().position(|e| !wanted(*e)) {
                while open.len() > k {
                    let e = open.pop().expect("len > k");
                    md.push_markup(e.delimiter());
                }
            }
            let mut openers: Vec<Emphasis> = [Emphasis::Bold, Emphasis::Italic]
                .into_iter()
                .filter(|e| wanted(*e) && !open.contains(e))
                .collect();
            openers.sort_by_key(|e| std::cmp::Reverse(run_end[i][*e as usize]));
            let mut text = text.as_str();
            if !openers.is_empty() {
                // An opener must touch the text it styles: a reopened run starting with a
                // space puts the space first (a bold space looks like any other).
                let body = text.trim_start();
                md.push_text(&text[..text.len() - body.len()]);
                text = body;
            }
            for e in openers {
                open.push(e);
                md.push_markup(e.delimiter());
            }
            md.push_text(text);
        }
        while let Some(e) = open.pop() {
            md.push_markup(e.delimiter());
        }
        if let Some(url) = link {
            md.push_markup(&format!("]({})", md_url(url)));
        }
    }
}

/// Renders minutes as CommonMark, leaving out off-the-record passages.
pub fn to_markdown(rich: &RichText) -> String {
    let mut out = String::new();
    let mut previous: Option<BlockKind> = None;
    let mut number = 0;
    for mut block in on_record(rich) {
        let same_list = previous == Some(block.kind)
            && matches!(block.kind, BlockKind::BulletItem | BlockKind::NumberedItem);
        if previous.is_some() {
            out.push_str(if same_list { "\n" } else { "\n\n" });
        }
        number = if same_list { number + 1 } else { 1 };
        let marker = match block.kind {
            BlockKind::Heading(level) => format!("{} ", "#".repeat(level.clamp(1, 6) as usize)),
            BlockKind::BulletItem => "- ".to_owned(),
            BlockKind::NumberedItem => format!("{number}. "),
            BlockKind::Paragraph => String::new(),
        };
        out.push_str(&marker);
        md_inline(&mut block.chars, &mut out, marker.len());
        previous = Some(block.kind);
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------
// HTML

fn html_escape(text: &str, out: &mut String) {
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("<br />"),
            _ => out.push(ch),
        }
    }
}

fn html_inline(chars: &[Styled], out: &mut String) {
    let segs = segments(chars);
    for (link, group) in link_groups(&segs) {
        if let Some(url) = link {
            out.push_str("<a href=\"");
            html_escape(&url.replace(' ', "%20"), out);
            out.push_str("\">");
        }
        for (text, style) in group {
            if style.bold {
                out.push_str("<strong>");
            }
            if style.italic {
                out.push_str("<em>");
            }
            html_escape(text, out);
            if style.italic {
                out.push_str("</em>");
            }
            if style.bold {
                out.push_str("</strong>");
            }
        }
        if link.is_some() {
            out.push_str("</a>");
        }
    }
}

/// Renders minutes as an HTML fragment, leaving out off-the-record passages.
pub fn to_html(rich: &RichText) -> String {
    let mut out = String::new();
    let mut open_list: Option<&str> = None;
    for block in on_record(rich) {
        let list = match block.kind {
            BlockKind::BulletItem => Some("ul"),
            BlockKind::NumberedItem => Some("ol"),
            _ => None,
        };
        if open_list != list {
            if let Some(tag) = open_list {
                out.push_str(&format!("</{tag}>\n"));
            }
            if let Some(tag) = list {
                out.push_str(&format!("<{tag}>\n"));
            }
            open_list = list;
        }
        let tag = match block.kind {
            BlockKind::Heading(level) => format!("h{}", level.clamp(1, 6)),
            BlockKind::BulletItem | BlockKind::NumberedItem => "li".to_owned(),
            BlockKind::Paragraph => "p".to_owned(),
        };
        out.push_str(&format!("<{tag}>"));
        html_inline(&block.chars, &mut out);
        out.push_str(&format!("</{tag}>\n"));
    }
    if let Some(tag) = open_list {
        out.push_str(&format!("</{tag}>\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::meeting::{agree_minutes, init, OneOffKind};
    use crate::model::minutes::{
        insert_paragraph, insert_text, mark_off_record, set_bold, set_italic, set_link,
    };
    use automerge::transaction::Transaction;
    use automerge::{ActorId, Automerge, TextEncoding};
    use cairn_sync::ids::MemberId;
    use pulldown_cmark::{Event, Parser, Tag};

    fn edit<R>(doc: &mut Automerge, f: impl FnOnce(&mut Transaction<'_>) -> R) -> R {
        let mut tx = doc.transaction();
        let r = f(&mut tx);
        tx.commit();
        r
    }

    fn range(rich: &RichText, needle: &str) -> std::ops::Range<usize> {
        let byte = rich
            .text
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not found"));
        let start = rich.text[..byte].encode_utf16().count();
        start..start + needle.encode_utf16().count()
    }

    /// Appends a paragraph of `kind` with `text` at the end of the minutes.
    fn append(tx: &mut Transaction<'_>, kind: BlockKind, text: &str) {
        let end = minutes::read_minutes(tx).unwrap().len_utf16();
        insert_paragraph(tx, end, kind).unwrap();
        insert_text(tx, end + 1, text).unwrap();
    }

    const SECRET: [&str; 3] = ["Jo's landlord", "SECRET-HEADING", "private aside"];

    /// Minutes that use everything the exports must handle.
    fn minutes_doc() -> Automerge {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        doc.set_actor(ActorId::from([1; 16]));
        edit(&mut doc, |tx| {
            init(tx, OneOffKind::Training, "Training").unwrap()
        });
        edit(&mut doc, |tx| {
            let attendees = minutes::read_minutes(tx).unwrap().paragraphs()[1].start;
            insert_text(tx, attendees, "Ana, Ben & <Chi> \"quoted\" 'single'").unwrap();
            append(tx, BlockKind::BulletItem, "Meet monthly on Wednesdays");
            append(
                tx,
                BlockKind::BulletItem,
                "Read the *guide* before June about Jo's landlord",
            );
            append(tx, BlockKind::NumberedItem, "First step");
            append(tx, BlockKind::NumberedItem, "Second step");
            append(tx, BlockKind::Heading(3), "SECRET-HEADING");
            append(
                tx,
                BlockKind::Paragraph,
                "See the handbook or click me, then a private aside ends.",
            );
            append(tx, BlockKind::Paragraph, "1. not a list\n# not a heading");
            let rich = minutes::read_minutes(tx).unwrap();
            set_bold(tx, range(&rich, "Meet monthly "), true).unwrap();
            set_italic(tx, range(&rich, "Wednesdays"), true).unwrap();
            set_bold(tx, range(&rich, "guide"), true).unwrap();
            mark_off_record(tx, range(&rich, " about Jo's landlord"), true).unwrap();
            mark_off_record(tx, range(&rich, "\u{fffc}SECRET-HEADING"), true).unwrap();
            mark_off_record(tx, range(&rich, "a private aside "), true).unwrap();
            set_link(
                tx,
                range(&rich, "handbook"),
                Some("https://example.org/hand book_(v2)"),
            )
            .unwrap();
            set_link(tx, range(&rich, "click me"), Some("javascript:alert(1)")).unwrap();
        });
        doc
    }

    /// Every text event with the path of tags it sits in, e.g. `li>strong`, `p>a(url)`.
    fn structure(md: &str) -> Vec<(String, String)> {
        let mut stack: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for event in Parser::new(md) {
            match event {
                Event::Start(tag) => stack.push(match tag {
                    Tag::Heading { level, .. } => format!("{level}"),
                    Tag::Paragraph => "p".into(),
                    Tag::List(None) => "ul".into(),
                    Tag::List(Some(_)) => "ol".into(),
                    Tag::Item => "li".into(),
                    Tag::Strong => "strong".into(),
                    Tag::Emphasis => "em".into(),
                    Tag::Link { dest_url, .. } => format!("a({dest_url})"),
                    other => format!("{other:?}"),
                }),
                Event::End(_) => {
                    stack.pop();
                }
                Event::Text(text) => out.push((stack.join(">"), text.to_string())),
                Event::HardBreak => out.push((stack.join(">"), "\n".into())),
                other => out.push((stack.join(">"), format!("{other:?}"))),
            }
        }
        out
    }

    fn text_under(structure: &[(String, String)], path: &str) -> String {
        structure
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, t)| t.as_str())
            .collect()
    }

    #[test]
    fn markdown_keeps_the_structure_and_drops_what_is_off_the_record() {
        let doc = minutes_doc();
        let md = markdown(&doc, Version::Current).unwrap();
        for secret in SECRET {
            assert!(
                !md.contains(secret),
                "off-the-record {secret:?} leaked:\n{md}"
            );
        }
        let s = structure(&md);
        // Headings from the template; the off-the-record heading is gone.
        let headings: Vec<_> = s
            .iter()
            .filter(|(p, _)| p == "h2")
            .map(|(_, t)| t.as_str())
            .collect();
        assert_eq!(
            headings,
            [
                "Attendees",
                "Apologies",
                "Decisions",
                "Actions",
                "Topics for next time"
            ]
        );
        assert!(!s.iter().any(|(p, _)| p == "h3"));
        // Escaped text comes back exactly (the link's text sits under `a`).
        assert_eq!(
            text_under(&s, "p"),
            "Ana, Ben & <Chi> \"quoted\" 'single'See the  or click me, then ends.1. not a list\n# not a heading"
        );
        // A bulleted list with bold and italic (the typed asterisks stay text); a numbered list.
        assert_eq!(text_under(&s, "ul>li>strong"), "Meet monthlyguide");
        assert_eq!(text_under(&s, "ul>li>em"), "Wednesdays");
        assert_eq!(text_under(&s, "ul>li"), " on Read the ** before June");
        let numbered: Vec<_> = s
            .iter()
            .filter(|(p, _)| p == "ol>li")
            .map(|(_, t)| t.as_str())
            .collect();
        assert_eq!(numbered, ["First step", "Second step"]);
        // The safe link is a link (its destination percent-encoded); the unsafe one is text.
        assert_eq!(
            text_under(&s, "p>a(https://example.org/hand%20book%5F%28v2%29)"),
            "handbook"
        );
        assert!(!md.contains("javascript"));
    }

    #[test]
    fn emphasis_edges_parse_as_intended() {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        edit(&mut doc, |tx| init(tx, OneOffKind::Other, "t").unwrap());
        edit(&mut doc, |tx| {
            append(
                tx,
                BlockKind::Paragraph,
                "boldthen italic and mid word plain",
            );
            let rich = minutes::read_minutes(tx).unwrap();
            // Bold directly followed by italic, bold ending in a space, bold inside a word.
            set_bold(tx, range(&rich, "bold"), true).unwrap();
            set_italic(tx, range(&rich, "then "), true).unwrap();
            set_bold(tx, range(&rich, "italic and "), true).unwrap();
            set_italic(tx, range(&rich, "italic"), true).unwrap();
            set_bold(tx, range(&rich, "d wo"), true).unwrap();
        });
        let md = markdown(&doc, Version::Current).unwrap();
        let s = structure(&md);
        // The space before "and" moved outside the reopened bold run.
        assert_eq!(text_under(&s, "p>strong"), "boldandd wo", "{md}");
        assert_eq!(text_under(&s, "p>em"), "then ", "{md}");
        assert_eq!(text_under(&s, "p>em>strong"), "italic", "{md}");
    }

    /// A small well-formedness check: only known tags, properly nested, no stray `<`, `>` or
    /// raw `&`, and attributes quoted.
    fn assert_well_formed(html: &str) {
        let allowed = [
            "p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "strong", "em", "a", "br",
        ];
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = html;
        while let Some(lt) = rest.find('<') {
            let text = &rest[..lt];
            assert!(!text.contains('>'), "stray > in {text:?}");
            for (i, _) in text.match_indices('&') {
                let entity = &text[i..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                        .iter()
                        .any(|e| entity.starts_with(e)),
                    "raw & in {text:?}"
                );
            }
            let gt = rest[lt..].find('>').expect("unclosed tag") + lt;
            let tag = &rest[lt + 1..gt];
            assert!(!tag.contains('<'), "< inside tag {tag:?}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name), "mismatched </{name}>");
            } else if tag.ends_with('/') {
                assert_eq!(tag.trim_end_matches('/').trim(), "br");
            } else {
                let name = tag.split(' ').next().unwrap();
                assert!(allowed.contains(&name), "unexpected tag {name}");
                if name == "a" {
                    let attr = tag
                        .strip_prefix("a href=\"")
                        .expect("href")
                        .strip_suffix('"')
                        .expect("quoted");
                    assert!(!attr.contains('"'));
                }
                stack.push(name);
            }
            rest = &rest[gt + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
    }

    #[test]
    fn html_is_well_formed_escaped_and_off_the_record_free() {
        let doc = minutes_doc();
        let html = html(&doc, Version::Current).unwrap();
        assert_well_formed(&html);
        for secret in SECRET {
            assert!(
                !html.contains(secret),
                "off-the-record {secret:?} leaked:\n{html}"
            );
        }
        assert!(html.contains("<h2>Attendees</h2>"));
        assert!(
            html.contains("<p>Ana, Ben &amp; &lt;Chi&gt; &quot;quoted&quot; &#39;single&#39;</p>")
        );
        assert!(
            html.contains("<ul>\n<li><strong>Meet monthly </strong>on <em>Wednesdays</em></li>")
        );
        assert!(html.contains("<ol>\n<li>First step</li>\n<li>Second step</li>\n</ol>"));
        assert!(html.contains("<a href=\"https://example.org/hand%20book_(v2)\">handbook</a>"));
        assert!(
            html.contains(" or click me, then ends.</p>"),
            "unsafe link rendered as text:\n{html}"
        );
        assert!(!html.contains("javascript"));
        assert!(html.contains("1. not a list<br /># not a heading"));
    }

    #[test]
    fn the_agreed_version_exports_as_agreed() {
        let mut doc = minutes_doc();
        assert!(matches!(
            markdown(&doc, Version::Agreed),
            Err(ExportError::NotAgreed)
        ));
        let heads = doc.get_heads();
        edit(&mut doc, |tx| {
            agree_minutes(tx, &heads, &MemberId::from("ana"), 5).unwrap()
        });
        edit(&mut doc, |tx| {
            append(tx, BlockKind::Paragraph, "Added after agreement")
        });
        assert!(!markdown(&doc, Version::Agreed)
            .unwrap()
            .contains("Added after agreement"));
        assert!(markdown(&doc, Version::Current)
            .unwrap()
            .contains("Added after agreement"));
    }

    #[test]
    fn only_web_and_mail_links_are_rendered() {
        assert!(safe_url("https://example.org").is_some());
        assert!(safe_url("HTTP://example.org").is_some());
        assert!(safe_url("mailto:circle@example.org").is_some());
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "/relative",
            "https://",
            "https://a\u{0}b",
            "vbscript:x",
        ] {
            assert!(safe_url(bad).is_none(), "{bad}");
        }
    }
}
