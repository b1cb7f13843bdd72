mod fs_support;
use fs_support::*;

#[test]
fn smoke() {
    let m = mount();
    std::fs::write(m.join("a"), b"hello").unwrap();
    assert_eq!(std::fs::read(m.join("a")).unwrap(), b"hello");
    eprintln!("{:?}", m.server().open_stats());
    m.unmount();
}
