//! The scorer against hand-computed cases (always) and against NAB's published results (when
//! the corpus is present: CI has it beside the repository).

use super::{
    corpus::{self, DataFile, Profile},
    read_results, score,
};
use crate::util::root;

fn standard() -> Profile {
    Profile {
        name: "standard".into(),
        tp: 1.0,
        fp: 0.11,
        fn_: 1.0,
    }
}

/// 100 rows a minute apart, windows given as row ranges.
fn file(windows: &[(usize, usize)]) -> DataFile {
    let times: Vec<i64> = (0..100).map(|i| i * 60_000_000).collect();
    DataFile {
        name: "synthetic/a.csv".into(),
        values: vec![0.0; 100],
        windows: windows.iter().map(|&(a, b)| (times[a], times[b])).collect(),
        times,
    }
}

#[test]
fn scaled_sigmoid_matches_nab() {
    // nab/sweeper.py's docstring: −1 → 0.98661, −0.5 → 0.84828, 0 → 0, 1 → −0.98661.
    let close = |a: f64, b: f64| (a - b).abs() < 1e-5;
    assert!(close(score::scaled_sigmoid(-1.0), 0.98661));
    assert!(close(score::scaled_sigmoid(-0.5), 0.84828));
    assert_eq!(score::scaled_sigmoid(0.0), 0.0);
    assert!(close(score::scaled_sigmoid(1.0), -0.98661));
    assert_eq!(score::scaled_sigmoid(3.0), -1.0);
}

#[test]
fn hand_computed_scores() {
    let p = standard();
    // Probation is the first 15 rows; one window, rows 40..=59 (width 20).
    let files = vec![file(&[(40, 59)])];
    let raw = |rows: &[usize]| score::raw_score(&files, &p, |_, r| rows.contains(&r));
    assert_eq!(raw(&[]), -1.0);
    // The window's first row is worth exactly tp; later rows in it add nothing.
    assert!((raw(&[40, 41, 59]) - 1.0).abs() < 1e-12);
    // Its last row: position −1/20.
    let last = score::scaled_sigmoid(-1.0 / 20.0) / score::scaled_sigmoid(-1.0);
    assert!((raw(&[59]) - last).abs() < 1e-12);
    // Before any window a detection costs the full fp weight; in probation nothing.
    assert!((raw(&[20]) - (-1.0 - 0.11)).abs() < 1e-12);
    assert_eq!(raw(&[3]), -1.0);
    // After the window: σ(|59 − i| / 19) · fp, cheap right after it.
    let after = 0.11 * score::scaled_sigmoid(10.0 / 19.0);
    assert!((raw(&[69]) - (-1.0 + after)).abs() < 1e-12);
    // Normalised: null 0, perfect 100.
    assert_eq!(score::normalise(&files, &p, raw(&[])), 0.0);
    assert!((score::normalise(&files, &p, raw(&[40])) - 100.0).abs() < 1e-9);
}

#[test]
fn optimiser_picks_the_best_threshold() {
    let p = standard();
    let files = vec![file(&[(40, 59)])];
    let mut s = vec![0.0; 100];
    s[45] = 0.8; // in the window
    s[20] = 0.9; // a false positive before it, scored higher
    s[70] = 0.3;
    let (t, raw) = score::optimise(&files, &[s.clone()], &p);
    // At 0.8: the FP (−0.11) and the detection; at 0.9 only the FP; at ∞ nothing.
    let expect = -0.11 + score::scaled_sigmoid(-15.0 / 20.0) / score::scaled_sigmoid(-1.0);
    assert_eq!(t, 0.8);
    assert!((raw - expect).abs() < 1e-12);
    assert!((score::raw_score(&files, &p, |_, r| s[r] >= t) - raw).abs() < 1e-12);
    // Nothing worth firing: the optimiser keeps the null score.
    let (t, raw) = score::optimise(&files, &[vec![0.5; 100]], &p);
    assert_eq!((t, raw), (f64::INFINITY, -1.0));
}

/// The NAB corpus, found as `cargo xtask nab` finds it; `None` (with a message) when absent.
fn nab() -> Option<corpus::Corpus> {
    match corpus::locate(None, &root()) {
        Ok(dir) => Some(corpus::load(&dir).expect("the NAB corpus loads")),
        Err(e) => {
            eprintln!("SKIPPED: no NAB corpus ({e})");
            None
        }
    }
}

#[test]
fn null_and_perfect_detectors_score_0_and_100() {
    let Some(c) = nab() else { return };
    assert_eq!(c.files.len(), 58);
    let perfect: Vec<Vec<f64>> = c
        .files
        .iter()
        .map(|f| {
            f.times
                .iter()
                .map(|t| f64::from(f.windows.iter().any(|w| w.0 == *t)))
                .collect()
        })
        .collect();
    let null: Vec<Vec<f64>> = c.files.iter().map(|f| vec![0.0; f.times.len()]).collect();
    for p in &c.profiles {
        let (_, raw) = score::optimise(&c.files, &null, p);
        assert_eq!(score::normalise(&c.files, p, raw), 0.0, "{}", p.name);
        let (t, raw) = score::optimise(&c.files, &perfect, p);
        assert_eq!(t, 1.0);
        assert!(
            (score::normalise(&c.files, p, raw) - 100.0).abs() < 1e-9,
            "{}",
            p.name
        );
    }
}

#[test]
fn published_windowed_gaussian_results_reproduce() {
    let Some(c) = nab() else { return };
    let dir = c.dir.join("results/windowedGaussian");
    if !dir.is_dir() {
        eprintln!("SKIPPED: no {}", dir.display());
        return;
    }
    let cols = read_results(&c, &dir, None).unwrap();
    // final_results.json: standard 39.65, reward_low_FP_rate 20.87, reward_low_FN_rate 47.41.
    for (p, published) in c.profiles.iter().zip([39.65, 20.87, 47.41]) {
        let (_, raw) = score::optimise(&c.files, &cols.scores, p);
        let got = score::normalise(&c.files, p, raw);
        assert!((got - published).abs() < 0.01, "{}: {got}", p.name);
    }
}
