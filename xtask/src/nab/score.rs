//! NAB's scoring rules (numenta/NAB `nab/sweeper.py`, `optimizer.py`, `runner.normalize`),
//! reimplemented: per-row sweep scores, one threshold optimised over the whole corpus, the score
//! at a fixed threshold, and normalisation between the null and the perfect detector.
//!
//! - The first `min(floor(0.15·N), 750)` rows of a file are probationary: not scored.
//! - A row inside a window (from the row whose timestamp is the window's start to the one that
//!   is its end) is worth `tp · σ(pos) / σ(−1)`, `pos = −(right − i + 1) / width` (so +tp at the
//!   left edge, 0 past the right one), where `σ(p) = 2/(1 + e^{5p}) − 1` (−1 from p ≥ 3).
//!   A window counts only its best (earliest) detection; a window without one costs `−fn`.
//! - A row outside every window is worth `fp · σ(|prev_right − i| / (prev_width − 1))`
//!   (σ(3) = −1 before the first window): every detection there adds it.
//! - A row is a detection when its anomaly score is ≥ the threshold.
//! - Normalised score: `100 · (S − S_null) / (S_perfect − S_null)`, where the null detector
//!   never fires (`S_null = −fn ·` windows) and the perfect one fires at each window's first
//!   row (`S_perfect = tp ·` windows).

use super::corpus::{DataFile, Profile};

/// NAB's scaled sigmoid of a relative position (−1 at a window's left edge, 0 at its right).
pub fn scaled_sigmoid(pos: f64) -> f64 {
    if pos >= 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * pos).exp()) - 1.0
    }
}

/// One scorable (post-probation) row: what a detection there is worth, and its window.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub sweep: f64,
    /// Corpus-wide window number (`None`: outside every window).
    pub window: Option<usize>,
}

/// Sweep scores of one file's scorable rows, in file order, with `(row index, Row)`.
/// `first_window` numbers this file's windows from there; returns how many it has.
pub fn sweep_rows(file: &DataFile, p: &Profile, first_window: usize) -> (Vec<(usize, Row)>, usize) {
    let n = file.times.len();
    let probation = ((0.15 * n as f64).floor()).min(750.0) as usize;
    let index_of = |t: i64| file.times.iter().position(|&x| x == t);
    let max_tp = scaled_sigmoid(-1.0);
    let mut pending = file.windows.iter().enumerate().peekable();
    // (window number, end time, right index, width) of the window we are in, and (right
    // index, width) of the last one left.
    let mut cur: Option<(usize, i64, usize, f64)> = None;
    let mut prev: Option<(usize, f64)> = None;
    let mut rows = Vec::with_capacity(n.saturating_sub(probation));
    for (i, &t) in file.times.iter().enumerate() {
        if let Some(&(k, &(start, end))) = pending.peek() {
            if t == start {
                pending.next();
                let right = index_of(end).expect("checked at load");
                let left = index_of(start).expect("checked at load");
                cur = Some((first_window + k, end, right, (right - left + 1) as f64));
            }
        }
        let row = match cur {
            Some((w, _, right, width)) => {
                let pos = -((right as f64) - i as f64 + 1.0) / width;
                Row {
                    sweep: scaled_sigmoid(pos) * p.tp / max_tp,
                    window: Some(w),
                }
            }
            None => {
                let pos = match prev {
                    None => 3.0,
                    Some((right, width)) => (right as f64 - i as f64).abs() / (width - 1.0),
                };
                Row {
                    sweep: scaled_sigmoid(pos) * p.fp,
                    window: None,
                }
            }
        };
        if i >= probation {
            rows.push((i, row));
        }
        if let Some((_, end, _, width)) = cur {
            if t == end {
                prev = Some((i, width));
                cur = None;
            }
        }
    }
    (rows, file.windows.len())
}

/// Raw score of a set of detections: `fired(file, row)` says whether a row is a detection.
pub fn raw_score(files: &[DataFile], p: &Profile, fired: impl Fn(usize, usize) -> bool) -> f64 {
    let mut total = 0.0;
    let mut first_window = 0;
    for (f, file) in files.iter().enumerate() {
        let (rows, nw) = sweep_rows(file, p, first_window);
        let mut best: Vec<Option<f64>> = vec![None; nw];
        for (i, r) in rows {
            match r.window {
                // A window with a scorable row costs −fn until something fires in it.
                Some(w) => {
                    let b = best[w - first_window].get_or_insert(-p.fn_);
                    if fired(f, i) {
                        *b = b.max(r.sweep);
                    }
                }
                None if fired(f, i) => total += r.sweep,
                None => {}
            }
        }
        total += best.iter().flatten().sum::<f64>();
        first_window += nw;
    }
    total
}

/// The threshold that maximises the corpus's raw score for `scores[file][row]` (a detection is
/// `score ≥ threshold`), and that score. Ties go to the highest threshold, as NAB's optimiser
/// (a stable sort of thresholds taken high to low) does. `f64::INFINITY` means "never fire".
pub fn optimise(files: &[DataFile], scores: &[Vec<f64>], p: &Profile) -> (f64, f64) {
    let mut all: Vec<(f64, Row)> = Vec::new();
    let mut first_window = 0;
    let mut windows_scored = Vec::new();
    for (file, sc) in files.iter().zip(scores) {
        let (rows, nw) = sweep_rows(file, p, first_window);
        windows_scored.resize(first_window + nw, false);
        for (i, r) in rows {
            if let Some(w) = r.window {
                windows_scored[w] = true;
            }
            all.push((sc[i], r));
        }
        first_window += nw;
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut best: Vec<f64> = vec![-p.fn_; windows_scored.len()];
    let mut total: f64 = -p.fn_ * windows_scored.iter().filter(|&&s| s).count() as f64;
    let (mut best_threshold, mut best_total) = (f64::INFINITY, total);
    let mut i = 0;
    while i < all.len() {
        let threshold = all[i].0;
        while i < all.len() && all[i].0.total_cmp(&threshold).is_eq() {
            let r = all[i].1;
            match r.window {
                Some(w) if r.sweep > best[w] => {
                    total += r.sweep - best[w];
                    best[w] = r.sweep;
                }
                Some(_) => {}
                None => total += r.sweep,
            }
            i += 1;
        }
        if total > best_total {
            (best_threshold, best_total) = (threshold, total);
        }
    }
    (best_threshold, best_total)
}

/// The null detector's raw score (nothing fires).
pub fn null_score(files: &[DataFile], p: &Profile) -> f64 {
    raw_score(files, p, |_, _| false)
}

/// The perfect detector's raw score as NAB normalises: `tp ·` every labelled window.
pub fn perfect_score(files: &[DataFile], p: &Profile) -> f64 {
    p.tp * files.iter().map(|f| f.windows.len()).sum::<usize>() as f64
}

/// `100 · (raw − null) / (perfect − null)`.
pub fn normalise(files: &[DataFile], p: &Profile, raw: f64) -> f64 {
    let null = null_score(files, p);
    100.0 * (raw - null) / (perfect_score(files, p) - null)
}
