//! Flame graph SVG of a profile, drawn by inferno from the folded stacks.

use inferno::flamegraph::{self, color::MultiPalette, Options, Palette};

use super::folded;
use super::model::Profile;

/// Why a flame graph could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum SvgError {
    #[error("render flame graph: {0}")]
    Render(#[from] std::io::Error),
}

/// Draws `profile` as an interactive flame graph titled `title`; kernel frames (`_[k]`) are
/// colored apart. A profile without samples gives a small SVG saying so.
pub fn render(profile: &Profile, title: &str) -> Result<Vec<u8>, SvgError> {
    let folded = folded::render(profile);
    let lines = scaled_lines(&folded);
    if lines.is_empty() {
        return Ok(no_samples(title).into_bytes());
    }
    let mut opt = Options::default();
    opt.title = title.to_string();
    opt.colors = Palette::Multi(MultiPalette::Java);
    opt.count_name = "samples".to_string();
    opt.deterministic = true;
    opt.hash = true;
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut svg)?;
    Ok(svg)
}

/// The folded lines, counts divided down so that their sum fits inferno's `u64` total (it adds
/// them up unchecked). Lines without a count are dropped.
fn scaled_lines(folded: &str) -> Vec<String> {
    let parsed: Vec<(&str, u64)> = folded
        .lines()
        .filter_map(|l| {
            let (stack, count) = l.rsplit_once(' ')?;
            Some((stack, count.parse().ok()?))
        })
        .collect();
    let total: u128 = parsed.iter().map(|&(_, c)| u128::from(c)).sum();
    let divisor = total.div_ceil(u128::from(u64::MAX)).max(1);
    parsed
        .into_iter()
        .map(|(stack, c)| format!("{stack} {}", u128::from(c) / divisor))
        .collect()
}

/// A valid SVG with `title` and "no samples", for profiles inferno refuses to draw.
fn no_samples(title: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" standalone="no"?>"#,
            "\n",
            r#"<svg version="1.1" width="1200" height="80" viewBox="0 0 1200 80" "#,
            r#"xmlns="http://www.w3.org/2000/svg">"#,
            r#"<rect x="0" y="0" width="100%" height="100%" fill="rgb(238,238,238)"/>"#,
            r#"<text x="600" y="24" font-size="17" font-family="Verdana" text-anchor="middle">{}</text>"#,
            r#"<text x="600" y="56" font-size="12" font-family="Verdana" text-anchor="middle">no samples</text>"#,
            "</svg>\n"
        ),
        escape(title)
    )
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::model::{ProcessProfile, Sample};
    use super::super::otlp::tests::profile;
    use super::*;

    fn is_svg(svg: &str) {
        assert!(
            svg.starts_with("<?xml") || svg.starts_with("<svg"),
            "{}",
            &svg[..svg.len().min(100)]
        );
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn draws_functions_and_kernel_frames() {
        let svg = String::from_utf8(render(&profile(), "cpu <node-1>").unwrap()).unwrap();
        is_svg(&svg);
        for name in [
            "__libc_start_main",
            "helper",
            "write",
            "do_syscall_64",
            "app+0x5000",
        ] {
            assert!(svg.contains(name), "{name} missing");
        }
        // inferno drops the `_[k]` annotation from the text and paints kernel frames orange
        // (blue component 0); user frames get other hues.
        let fill_of = |title: &str| {
            let at = svg.find(&format!("<title>{title} (")).expect(title);
            let rest = &svg[at..];
            let fill = &rest[rest.find("fill=\"rgb(").expect("fill") + 10..];
            fill[..fill.find(')').expect(")")].to_string()
        };
        assert!(
            fill_of("do_syscall_64").ends_with(",0"),
            "{}",
            fill_of("do_syscall_64")
        );
        assert!(!fill_of("write").ends_with(",0"), "{}", fill_of("write"));
        assert!(svg.contains("cpu &lt;node-1&gt;"));
    }

    #[test]
    fn empty_profiles_say_no_samples() {
        let empty = Profile {
            processes: vec![ProcessProfile::default()],
            ..Default::default()
        };
        for p in [Profile::default(), empty] {
            let svg = String::from_utf8(render(&p, "a & b").unwrap()).unwrap();
            is_svg(&svg);
            assert!(svg.contains("no samples"));
            assert!(svg.contains("a &amp; b"));
        }
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let sample = |tid| Sample {
            tid,
            thread_name: "t".into(),
            count: u64::MAX,
            ..Default::default()
        };
        let p = Profile {
            processes: vec![ProcessProfile {
                executable_name: "x".into(),
                samples: vec![sample(1), sample(2), sample(3)],
                ..Default::default()
            }],
            ..Default::default()
        };
        // One line "x <u64::MAX saturated>"; then two distinct stacks of u64::MAX each.
        is_svg(&String::from_utf8(render(&p, "t").unwrap()).unwrap());
        let lines = scaled_lines("a 18446744073709551615\nb 18446744073709551615\n");
        assert_eq!(
            lines,
            vec!["a 9223372036854775807", "b 9223372036854775807"]
        );
    }
}
