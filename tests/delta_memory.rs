//! The delta rule as an associative memory (the paper's Sec. 4.2; docs/derivations.md Sec. 1): with beta = 1 and orthonormal keys it
//! stores and retrieves values exactly, and a second write to a key replaces the value, which the
//! sum rule does not (it adds).

mod common;

use common::{assert_close, seeded};
use fwp::{fast_weight, Backend, UpdateRule};
use tch::{Device, Kind, Tensor};

const BACKENDS: [Backend; 2] = [Backend::Reference, Backend::Chunked { chunk_size: 4 }];

/// n orthonormal keys of width d: `[n, d]`.
fn orthonormal_keys(n: i64, d: i64) -> Tensor {
    let (q, _) = Tensor::linalg_qr(
        &Tensor::randn([d, d], (Kind::Double, Device::Cpu)),
        "reduced",
    );
    q.transpose(0, 1).narrow(0, 0, n)
}

/// Writes (keys[i], values[i]) in order and queries with `queries`: returns (outputs, final state).
fn write(
    keys: &Tensor,
    values: &Tensor,
    queries: &Tensor,
    rule: UpdateRule,
    backend: Backend,
) -> (Tensor, Tensor) {
    let t = keys.size()[0];
    let shape = |x: &Tensor| x.view([1, 1, t, -1]);
    let beta = Tensor::ones([1, 1, t], (Kind::Double, Device::Cpu));
    let beta = (rule == UpdateRule::Delta).then_some(&beta);
    let r = fast_weight(
        &shape(queries),
        &shape(keys),
        &shape(values),
        beta,
        None,
        rule,
        backend,
    )
    .unwrap();
    (r.out.view([t, -1]), r.state.view([keys.size()[1], -1]))
}

#[test]
fn delta_rule_stores_and_retrieves_exactly() {
    let _rng = seeded(11);
    let keys = orthonormal_keys(8, 8);
    let values = Tensor::randn([8, 5], (Kind::Double, Device::Cpu));
    for backend in BACKENDS {
        let (_, state) = write(&keys, &values, &keys, UpdateRule::Delta, backend);
        // retrieval S^T k_i for every stored key
        let retrieved = keys.matmul(&state);
        assert_close(
            &format!("{backend:?} retrieved"),
            &retrieved,
            &values,
            1e-12,
            1e-12,
        );
    }
}

#[test]
fn second_write_replaces_with_delta_and_adds_with_sum() {
    let _rng = seeded(12);
    let keys = orthonormal_keys(6, 6);
    let values = Tensor::randn([6, 3], (Kind::Double, Device::Cpu));
    let new_value = Tensor::randn([1, 3], (Kind::Double, Device::Cpu));
    // write all six, then key 2 again with a new value
    let keys7 = Tensor::cat(&[&keys, &keys.narrow(0, 2, 1)], 0);
    let values7 = Tensor::cat(&[&values, &new_value], 0);
    for backend in BACKENDS {
        let (out, _) = write(&keys7, &values7, &keys7, UpdateRule::Delta, backend);
        // The last output queries key 2 right after its second write: the new value only.
        assert_close(
            &format!("{backend:?} delta replaces"),
            &out.narrow(0, 6, 1),
            &new_value,
            1e-12,
            1e-12,
        );
        // Other keys are untouched (orthogonal).
        let (_, state) = write(&keys7, &values7, &keys7, UpdateRule::Delta, backend);
        let others = keys.index_select(0, &Tensor::from_slice(&[0i64, 1, 3, 4, 5]));
        let want = values.index_select(0, &Tensor::from_slice(&[0i64, 1, 3, 4, 5]));
        assert_close(
            &format!("{backend:?} others kept"),
            &others.matmul(&state),
            &want,
            1e-12,
            1e-12,
        );

        let (out_sum, _) = write(&keys7, &values7, &keys7, UpdateRule::Sum, backend);
        let summed = values.narrow(0, 2, 1) + &new_value;
        assert_close(
            &format!("{backend:?} sum adds"),
            &out_sum.narrow(0, 6, 1),
            &summed,
            1e-12,
            1e-12,
        );
    }
}
