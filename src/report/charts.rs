//! The report's line charts, drawn by plotters as SVG text. The x axis is
//! days since the start of the window, labelled with the site's local dates.

use chrono::NaiveDate;
use plotters::prelude::*;

/// Colour-blind-safe and distinct in greyscale: stops of viridis.
const PALETTE: [RGBColor; 5] = [
    RGBColor(0x44, 0x01, 0x54),
    RGBColor(0x21, 0x91, 0x8c),
    RGBColor(0x3b, 0x52, 0x8b),
    RGBColor(0x5e, 0xc9, 0x62),
    RGBColor(0x90, 0xd7, 0x43),
];
const SIZE: (u32, u32) = (760, 240);

/// One named line: (days since the window's start, value).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart plotters could not draw.
#[derive(Debug, thiserror::Error)]
#[error("chart `{title}`: {detail}")]
pub struct ChartError {
    pub title: String,
    pub detail: String,
}

/// A line chart over `days`, or None when no series has a point.
pub fn lines(
    title: &str,
    unit: &str,
    days: &[NaiveDate],
    series: &[Series],
) -> Result<Option<String>, ChartError> {
    lines_in(title, unit, days, series, None)
}

/// As [`lines`], with the y axis over `y` (default: 0 to above the largest value).
pub fn lines_in(
    title: &str,
    unit: &str,
    days: &[NaiveDate],
    series: &[Series],
    y: Option<(f64, f64)>,
) -> Result<Option<String>, ChartError> {
    if series.iter().all(|s| s.points.is_empty()) {
        return Ok(None);
    }
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y = y.unwrap_or((0.0, if y_max <= 0.0 { 1.0 } else { y_max * 1.15 }));
    let width = days.len().max(1) as f64;
    let mut svg = String::new();
    draw(&mut svg, title, unit, days, width, y, series).map_err(|e| ChartError {
        title: title.to_string(),
        detail: format!("{e:?}"),
    })?;
    Ok(Some(svg))
}

fn draw(
    svg: &mut String,
    title: &str,
    unit: &str,
    days: &[NaiveDate],
    width: f64,
    (y_min, y_max): (f64, f64),
    series: &[Series],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..width, y_min..y_max)?;
    // A date at the start of its day only: ticks between days stay blank.
    let label = |x: &f64| match x.fract().abs() < 1e-6 {
        true => days
            .get(x.max(0.0) as usize)
            .map(|d| d.format("%m-%d").to_string())
            .unwrap_or_default(),
        false => String::new(),
    };
    chart
        .configure_mesh()
        .x_labels(days.len().clamp(2, 12) + 1)
        .x_label_formatter(&label)
        .y_label_formatter(&|y: &f64| match y.abs() >= 10.0 {
            true => format!("{y:.0}"),
            false => format!("{y:.1}"),
        })
        .y_desc(unit)
        .light_line_style(WHITE)
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(
                LineSeries::new(s.points.iter().copied(), color.stroke_width(2)).point_size(2),
            )?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_names_its_title_series_and_dates() {
        let days: Vec<NaiveDate> = (1..=3)
            .map(|d| NaiveDate::from_ymd_opt(2026, 11, d).unwrap())
            .collect();
        let series = [Series {
            name: "local".into(),
            points: vec![(0.5, 1.0), (1.5, 12.5), (2.5, 0.0)],
        }];
        let svg = lines("Loss per day", "%", &days, &series).unwrap().unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in ["Loss per day", "local", "11-02"] {
            assert!(svg.contains(text), "{text} missing from {svg}");
        }
        assert_eq!(
            svg.matches("\n11-01\n").count(),
            1,
            "one label per day: {svg}"
        );
    }

    #[test]
    fn no_points_no_chart() {
        let series = [Series {
            name: "gcp".into(),
            points: vec![],
        }];
        assert_eq!(lines("t", "%", &[], &series).unwrap(), None);
    }
}
