//! A timeline as an SVG plot (plotters): requests answered per second on top; resets,
//! misroutes and drops per second below, with the share of instances released (percent) on the
//! lower chart's right axis, so a failure can be read against the release that caused it.
//! Each event is a thin vertical line at its start; the share steps up there.

use plotters::prelude::*;

use crate::timeline::Timeline;

/// `timeline` drawn as an SVG document titled `title`.
pub fn render(timeline: &Timeline, title: &str) -> Result<String, String> {
    let mut out = String::new();
    draw(timeline, title, &mut out).map_err(|e| format!("plot {title}: {e}"))?;
    Ok(out)
}

fn draw(timeline: &Timeline, title: &str, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(out, (960, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.titled(title, ("sans-serif", 20))?.split_vertically(290);
    // The last second is cut short by the stop: not drawn (it would read as a dip).
    let whole = &timeline.seconds[..timeline.seconds.len().saturating_sub(1)];
    let seconds = whole.len().max(1) as f64;
    let points = |f: fn(&super::Second) -> u64| -> Vec<(f64, f64)> {
        whole.iter().enumerate().map(|(i, s)| (i as f64 + 0.5, f(s) as f64)).collect()
    };

    let replies = points(|s| s.replies);
    let top_max = replies.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&top)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..seconds, 0.0..top_max)?;
    chart.configure_mesh().x_desc("seconds").y_desc("requests answered / s").draw()?;
    chart
        .draw_series(LineSeries::new(replies, BLUE.stroke_width(2)))?
        .label("requests answered / s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
    for mark in &timeline.marks {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(mark.at_s, 0.0), (mark.at_s, top_max)],
            BLACK.mix(0.3).stroke_width(1),
        )))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;

    let failures = [
        ("resets / s", RED, points(|s| s.resets)),
        ("misroutes / s", MAGENTA, points(|s| s.misroutes)),
        ("drops / s", RGBColor(230, 140, 0), points(|s| s.drops)),
    ];
    let low_max = failures.iter().flat_map(|(_, _, p)| p.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..seconds, 0.0..low_max)?
        .set_secondary_coord(0.0..seconds, 0.0..105.0);
    chart.configure_mesh().x_desc("seconds").y_desc("failures / s").draw()?;
    chart.configure_secondary_axes().y_desc("instances released (%)").draw()?;
    for (label, color, series) in failures {
        chart
            .draw_series(LineSeries::new(series, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    // The released share as a step: flat until each release, then up.
    let mut share = vec![(0.0, 0.0)];
    for mark in &timeline.marks {
        if let Some(released) = mark.released {
            let last = share.last().map_or(0.0, |p| p.1);
            share.push((mark.at_s, last));
            share.push((mark.at_s, released * 100.0));
        }
    }
    let last = share.last().map_or(0.0, |p| p.1);
    share.push((seconds, last));
    chart
        .draw_secondary_series(LineSeries::new(share, GREEN.stroke_width(2)))?
        .label("instances released (%)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GREEN.stroke_width(2)));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_and_the_release_steps() {
        let mut t = Timeline::default();
        for i in 0..6 {
            t.add(f64::from(i) + 0.5, |s| {
                s.replies = 100;
                s.resets = u64::from(i == 3);
            });
        }
        t.mark(2.5, "release be1", Some(0.5));
        t.mark(4.0, "release be2", Some(1.0));
        let svg = render(&t, "release-test main").unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        for label in ["requests answered / s", "resets / s", "misroutes / s", "drops / s", "instances released (%)"] {
            assert!(svg.contains(label), "{label} missing");
        }
        assert!(svg.contains("release-test main"));
    }
}
