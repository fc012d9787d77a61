use tch::{Device, Kind, Tensor};
fn main() {
    let q = Tensor::randn([1, 1, 4, 3], (Kind::Float, Device::Cpu));
    let coo = q.to_sparse();
    println!("coo is_sparse {} kind {:?}", coo.is_sparse(), coo.f_kind());
    let r = fwp::fast_weight(&coo, &q, &q, None, None, fwp::UpdateRule::Sum, fwp::Backend::Auto);
    println!("{:?}", r.map(|_| ()).map_err(|e| e.to_string().lines().next().map(String::from)));
    let csr = q.view([4, 3]).f_to_sparse_csr(None::<i64>).unwrap();
    println!("csr is_sparse {} ", csr.is_sparse());
    let r = std::panic::catch_unwind(|| csr.is_contiguous());
    println!("{:?}", r.is_ok());
    let s = format!("{:?}", csr);
    println!("{s}");
}
