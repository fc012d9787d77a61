//! Feature maps: DPFP on a hand-computed example, widths, FAVOR+ as an estimator of exp(q . k),
//! the FAVOR+ matrix saved with the model, and the denormal flush that keeps FAVOR+ training fast.

mod common;

use common::{assert_close, seeded};
use fwp::feature_map::{self, dpfp, favor, orthogonal_gaussian};
use fwp::{FavorRedraw, FeatureMap, Phi};
use tch::{nn, Device, Kind, Tensor};

#[test]
fn dpfp_hand_computed() {
    // x = [1, 2, -3]: r = ReLU([x, -x]) = [1, 2, 0, 0, 0, 3]
    // roll(r, 1) = [3, 1, 2, 0, 0, 0] -> r * roll = [3, 2, 0, 0, 0, 0]
    // roll(r, 2) = [0, 3, 1, 2, 0, 0] -> r * roll = [0, 6, 0, 0, 0, 0]
    let x = Tensor::from_slice(&[1.0f64, 2.0, -3.0]);
    let want1 = Tensor::from_slice(&[3.0f64, 2.0, 0.0, 0.0, 0.0, 0.0]);
    let want2 = Tensor::from_slice(&[
        3.0f64, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0, 0.0, 0.0, 0.0, 0.0,
    ]);
    assert_close("dpfp nu=1", &dpfp(&x, 1).unwrap(), &want1, 0.0, 0.0);
    assert_close("dpfp nu=2", &dpfp(&x, 2).unwrap(), &want2, 0.0, 0.0);
    // and batched, [2, 3] -> [2, 6 nu]
    let xb = Tensor::stack(&[&x, &(-&x)], 0);
    assert_eq!(dpfp(&xb, 3).unwrap().size(), vec![2, 18]);
}

#[test]
fn widths() {
    assert_eq!(FeatureMap::Linear.width(64), 64);
    assert_eq!(FeatureMap::Identity.width(64), 64);
    assert_eq!(FeatureMap::Dpfp { nu: 3 }.width(64), 384);
    assert_eq!(FeatureMap::Favor { m: 128 }.width(64), 256);
    // Each map really produces its reported width.
    let vs = nn::VarStore::new(Device::Cpu);
    let x = Tensor::randn([2, 5, 16], (Kind::Float, Device::Cpu));
    for map in [
        FeatureMap::Linear,
        FeatureMap::Identity,
        FeatureMap::Dpfp { nu: 2 },
        FeatureMap::Favor { m: 24 },
    ] {
        let phi = Phi::new(vs.root() / map.to_string(), map, 16, FavorRedraw::Never).unwrap();
        assert_eq!(
            phi.forward_t(&x, false).unwrap().size(),
            vec![2, 5, map.width(16)],
            "{map}"
        );
    }
}

#[test]
fn linear_is_elu_plus_one_and_positive() {
    let x = Tensor::from_slice(&[-3.0f64, -0.5, 0.0, 2.0]);
    let got = feature_map::apply(FeatureMap::Linear, &x).unwrap();
    let want = Tensor::from_slice(&[(-3.0f64).exp(), (-0.5f64).exp(), 1.0, 3.0]);
    assert_close("elu+1", &got, &want, 1e-15, 1e-15);
}

#[test]
fn favor_estimates_exp_dot_product() {
    // Unbiased estimator, d = 16, |q|, |k| ~ 1, m = 256 (fixed seed): the mean over 512 pairs of
    // phi(q) . phi(k) is within 4% of the mean of exp(q . k), and single pairs within 10% on average
    // (measured: 1.8% and 5.0%; a wrong scale or norm term misses by far more).
    let _rng = seeded(7);
    let d = 16;
    let q = Tensor::randn([512, d], (Kind::Double, Device::Cpu)) * (1.0 / (d as f64).sqrt());
    let k = Tensor::randn([512, d], (Kind::Double, Device::Cpu)) * (1.0 / (d as f64).sqrt());
    let r = orthogonal_gaussian(256, d, Kind::Double, Device::Cpu).unwrap();
    let est =
        (favor(&q, &r).unwrap() * favor(&k, &r).unwrap()).sum_dim_intlist(-1, false, Kind::Double);
    let exact = (&q * &k).sum_dim_intlist(-1, false, Kind::Double).exp();
    let rel = ((&est - &exact).abs() / &exact).mean(Kind::Double);
    let bias = f64::try_from(
        (est.mean(Kind::Double) - exact.mean(Kind::Double)).abs() / exact.mean(Kind::Double),
    )
    .unwrap();
    let rel = f64::try_from(rel).unwrap();
    println!("FAVOR+ m=256: mean relative error {rel:.4}, relative error of the mean {bias:.5}");
    assert!(rel < 0.1, "mean relative error {rel}");
    assert!(bias < 0.04, "relative error of the mean {bias}");
    assert!(
        bool::try_from(est.gt(0.0).all()).unwrap(),
        "FAVOR+ features must be positive"
    );
}

#[test]
fn orthogonal_rows_are_orthogonal_within_blocks() {
    let _rng = seeded(8);
    let r = orthogonal_gaussian(20, 8, Kind::Double, Device::Cpu).unwrap(); // blocks of 8, 8, 4
    let block = r.narrow(0, 0, 8);
    let gram = block.matmul(&block.transpose(0, 1));
    let off_diag = &gram - gram.diagonal(0, 0, 1).diag_embed(0, -2, -1);
    assert!(f64::try_from(off_diag.abs().max()).unwrap() < 1e-10);
}

#[test]
fn favor_matrix_is_saved_and_fixed_unless_redrawn() {
    let _rng = seeded(9);
    let dir = std::env::temp_dir().join(format!("fwp-favor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("phi.safetensors");
    let x = Tensor::randn([3, 8], (Kind::Float, Device::Cpu));

    let vs = nn::VarStore::new(Device::Cpu);
    let phi = Phi::new(
        vs.root() / "phi",
        FeatureMap::Favor { m: 16 },
        8,
        FavorRedraw::Never,
    )
    .unwrap();
    let y1 = phi.forward_t(&x, true).unwrap();
    assert_close(
        "no redraw",
        &phi.forward_t(&x, true).unwrap(),
        &y1,
        0.0,
        0.0,
    );
    assert!(
        vs.trainable_variables().is_empty(),
        "the FAVOR+ matrix must not be trained"
    );
    vs.save(&file).unwrap();

    let mut vs2 = nn::VarStore::new(Device::Cpu);
    let phi2 = Phi::new(
        vs2.root() / "phi",
        FeatureMap::Favor { m: 16 },
        8,
        FavorRedraw::Never,
    )
    .unwrap();
    assert!(f64::try_from((phi2.forward_t(&x, false).unwrap() - &y1).abs().max()).unwrap() > 0.0);
    vs2.load(&file).unwrap();
    assert_close(
        "reloaded",
        &phi2.forward_t(&x, false).unwrap(),
        &y1,
        0.0,
        0.0,
    );

    let vs3 = nn::VarStore::new(Device::Cpu);
    let phi3 = Phi::new(
        vs3.root() / "phi",
        FeatureMap::Favor { m: 16 },
        8,
        FavorRedraw::EveryTrainingStep,
    )
    .unwrap();
    let a = phi3.forward_t(&x, true).unwrap();
    let b = phi3.forward_t(&x, true).unwrap();
    assert!(
        f64::try_from((&a - &b).abs().max()).unwrap() > 0.0,
        "training step must redraw"
    );
    let e1 = phi3.forward_t(&x, false).unwrap();
    assert_close(
        "eval does not redraw",
        &phi3.forward_t(&x, false).unwrap(),
        &e1,
        0.0,
        0.0,
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn parse_feature_maps() {
    assert_eq!("linear".parse::<FeatureMap>().unwrap(), FeatureMap::Linear);
    assert_eq!(
        "dpfp:3".parse::<FeatureMap>().unwrap(),
        FeatureMap::Dpfp { nu: 3 }
    );
    assert_eq!(
        "favor:64".parse::<FeatureMap>().unwrap(),
        FeatureMap::Favor { m: 64 }
    );
    for bad in ["dpfp", "dpfp:x", "softmax", "linear:2"] {
        let e = bad.parse::<FeatureMap>().unwrap_err().to_string();
        assert!(e.contains(bad), "error for '{bad}' should name it: {e}");
    }
}

/// Keys and queries of one pass see one FAVOR+ matrix, also where it is redrawn at every pass
/// (the same input gives the same features within a pass, different ones across passes), and the
/// redrawn features still estimate exp(q . k): averaged over passes, phi(q) . phi(k) -> exp(q . k).
/// Features drawn with separate matrices for q and k would average to about 1 instead.
#[test]
fn favor_redrawn_every_pass_shares_one_matrix_and_estimates_exp() {
    let _rng = seeded(31);
    let d = 8;
    for redraw in [FavorRedraw::EveryTrainingStep, FavorRedraw::EveryForward] {
        let vs = nn::VarStore::new(Device::Cpu);
        let phi = Phi::new(vs.root() / "phi", FeatureMap::Favor { m: 16 }, d, redraw).unwrap();
        let x = Tensor::randn([4, d], (Kind::Double, Device::Cpu)) * 0.3;
        let pass = phi.features(&[&x, &x], true).unwrap();
        assert_close(
            &format!("{redraw}: q and k in one pass"),
            &pass[0],
            &pass[1],
            0.0,
            0.0,
        );
        let next = phi.features(&[&x], true).unwrap();
        assert!(
            f64::try_from((&next[0] - &pass[0]).abs().max()).unwrap() > 1e-6,
            "{redraw}: a training pass must draw a new matrix"
        );
        let eval = phi.features(&[&x], false).unwrap();
        let eval2 = phi.features(&[&x], false).unwrap();
        let differ = f64::try_from((&eval[0] - &eval2[0]).abs().max()).unwrap() > 1e-6;
        assert_eq!(
            differ,
            redraw == FavorRedraw::EveryForward,
            "{redraw}: evaluation passes redraw only with every-forward"
        );
    }

    // the estimator: q . k = 0.5 for one pair of unit-scale vectors
    let vs = nn::VarStore::new(Device::Cpu);
    let phi = Phi::new(
        vs.root() / "phi",
        FeatureMap::Favor { m: 64 },
        d,
        FavorRedraw::EveryForward,
    )
    .unwrap();
    let q = Tensor::from_slice(&[0.5f64, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).view([1, d]);
    let k = Tensor::from_slice(&[0.5f64, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]).view([1, d]);
    let want = 0.5f64.exp();
    let passes = 2000;
    let mut shared = 0.0;
    let mut separate = 0.0;
    for _ in 0..passes {
        let f = phi.features(&[&q, &k], false).unwrap();
        shared += f64::try_from((&f[0] * &f[1]).sum(Kind::Double)).unwrap();
        let fq = phi.features(&[&q], false).unwrap();
        let fk = phi.features(&[&k], false).unwrap();
        separate += f64::try_from((&fq[0] * &fk[0]).sum(Kind::Double)).unwrap();
    }
    let (shared, separate) = (shared / passes as f64, separate / passes as f64);
    println!("exp(q.k) = {want:.4}; one matrix per pass: {shared:.4}; separate: {separate:.4}");
    assert!(
        (shared - want).abs() < 0.03 * want,
        "one matrix per pass estimates exp(q.k) = {want}, got {shared}"
    );
    assert!(
        (separate - want).abs() > 0.3,
        "separate matrices should not estimate exp(q.k): {separate}"
    );
}

/// `ops::set_flush_denormal` (the experiment binaries turn it on): a product below f32's smallest
/// normal is a denormal by default and 0 once flushed, on this test's own thread (a one-element op
/// runs on the calling thread), and the default comes back when it is turned off.
#[test]
fn flush_denormal_zeroes_denormal_results_on_this_thread() {
    let product = || {
        let a = Tensor::from_slice(&[1e-20f32]);
        f32::try_from(&a * &a).unwrap() // 1e-40: a denormal
    };
    fwp::ops::set_flush_denormal(false);
    let plain = product();
    assert!(
        plain > 0.0 && plain < f32::MIN_POSITIVE,
        "expected a denormal, got {plain:e}"
    );
    let supported = fwp::ops::set_flush_denormal(true);
    if cfg!(target_arch = "x86_64") {
        assert!(supported, "x86-64 CPUs support FTZ/DAZ");
    } else if !supported {
        return;
    }
    assert_eq!(product(), 0.0, "denormal result not flushed");
    fwp::ops::set_flush_denormal(false);
    assert_eq!(product(), plain);
}
