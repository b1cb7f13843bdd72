#!/usr/bin/env bash
# Build the Debian package: `bash packaging/deb.sh` writes target/debian/iochaos_VERSION_ARCH.deb
# with dpkg-deb (see docs/packaging.md for the layout). Builds the release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --release --locked --quiet -p iochaos -p iochaos-hook -p containerd-shim-iochaos-v2

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
bin=target/release
out=target/debian
root=$out/iochaos_${version}_${arch}
rm -rf "$root"
mkdir -p "$root/DEBIAN"

put() { # put MODE SRC DEST (DEST relative to the package root)
    install -D -m "$1" "$2" "$root/$3"
}

for b in iochaos iochaos-hook containerd-shim-iochaos-v2; do
    put 0755 "$bin/$b" "usr/bin/$b"
    strip --strip-debug "$root/usr/bin/$b"
done
for stage in createRuntime poststop; do
    put 0644 "packaging/podman/hooks.d/iochaos-$stage.json" \
        "usr/share/containers/oci/hooks.d/iochaos-$stage.json"
done
put 0644 packaging/deb/hook.toml etc/iochaos/hook.toml
put 0644 packaging/etc/iochaos/hook.toml usr/share/iochaos/hook.toml.example
put 0644 packaging/containerd/iochaos-runtime.toml usr/share/iochaos/containerd/iochaos-runtime.toml
put 0644 packaging/kubernetes/runtimeclass.yaml usr/share/iochaos/kubernetes/runtimeclass.yaml
put 0644 packaging/kubernetes/example-pod.yaml usr/share/iochaos/kubernetes/example-pod.yaml
put 0644 packaging/oci/hooks.json usr/share/iochaos/oci/hooks.json
put 0644 packaging/deb/tmpfiles.conf usr/lib/tmpfiles.d/iochaos.conf
put 0644 LICENSE usr/share/doc/iochaos/copyright

# Completions and man pages, from the binary just built.
mkdir -p "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d" "$root/usr/share/man/man1"
"$bin/iochaos" completions bash >"$root/usr/share/bash-completion/completions/iochaos"
"$bin/iochaos" completions zsh >"$root/usr/share/zsh/vendor-completions/_iochaos"
"$bin/iochaos" completions fish >"$root/usr/share/fish/vendor_completions.d/iochaos.fish"
"$bin/iochaos" man --dir "$root/usr/share/man/man1"
gzip -9n "$root"/usr/share/man/man1/*.1

# The newest glibc symbol version the binaries use.
glibc=$(objdump -T "$root"/usr/bin/* | sed -n 's/.*GLIBC_\([0-9.]*\).*/\1/p' | sort -uV | tail -n1)
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: iochaos
Version: $version
Architecture: $arch
Maintainer: iochaos developers <iochaos@users.noreply.github.com>
Installed-Size: $size
Depends: libc6 (>= $glibc)
Recommends: runc | crun
Suggests: podman, containerd
Section: admin
Priority: optional
Homepage: https://github.com/iochaos/iochaos
Description: filesystem fault injection into running processes and containers
 iochaos puts ChaosFS (a FUSE passthrough filesystem that fails chosen operations with
 chosen errors or delays) under a live process's open files, or under a container from its
 first instruction: the iochaos CLI, the OCI hook iochaos-hook (podman hooks.d files
 installed) and the containerd runtime io.containerd.iochaos.v2. The containerd
 configuration is not changed: `iochaos setup containerd` adds the runtime.
CONTROL
echo /etc/iochaos/hook.toml >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
# /run/iochaos now (tmpfiles.d creates it at boot). Nothing else: containerd's config is
# never edited here (`iochaos setup containerd` does it when asked).
if [ "$1" = configure ]; then
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create iochaos.conf || true
    else
        install -d -m 0700 /run/iochaos
    fi
fi
SCRIPT
cat >"$root/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
# /run/iochaos holds the journal of live injections: removed only when empty.
if [ "$1" = remove ] || [ "$1" = purge ]; then
    rmdir /run/iochaos 2>/dev/null || true
fi
SCRIPT
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"

deb=$out/iochaos_${version}_${arch}.deb
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
rm -rf "$root"
echo "$deb"
