"""lb/certs.py, pure: one PEM file → a served certificate or a refusal with its reason;
SNI names; the crt-list and its default; the runtime plan. Certificates are made with the
``openssl`` CLI (tests/tls.py), so the parser is checked against another implementation."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lb.certs import (
    RELOAD_REASON,
    CertFile,
    CrtList,
    Refused,
    Scan,
    build_crt_list,
    check_path,
    load_cert,
    merge,
    plan_changes,
    read_cert_dir,
    sni_name,
)
from lb.runtime import check_pem_payload
from tests.tls import OPENSSL, Ca, encrypt_key, fingerprint, intermediate, issue, make_ca

STAGE = "/run/haroute/certs"
LIST = "/run/haroute/crt-list"


@dataclass(frozen=True)
class Material:
    """Certificates made once for the module."""

    ca: Ca
    a: tuple[str, str]  # a.test, *.wild.test (EC)
    b: tuple[str, str]  # b.test (RSA 2048)
    ip_only: tuple[str, str]  # IP:127.0.0.1 only
    odd_sans: tuple[str, str]  # a mix of usable and unusable SANs
    chain_leaf: tuple[str, str]  # signed by an intermediate
    chain_inter: str
    weak: tuple[str, str]  # RSA 1024
    ed: tuple[str, str]  # Ed25519
    sha1: tuple[str, str]  # signed with SHA-1


@pytest.fixture(scope="module")
def m(tmp_path_factory: pytest.TempPathFactory) -> Material:
    ca = make_ca(tmp_path_factory.mktemp("ca"))
    inter_cert, inter_key = intermediate(ca)
    return Material(
        ca=ca,
        a=issue(ca, "a.test", ("DNS:a.test", "DNS:*.wild.test")),
        b=issue(ca, "b.test", ("DNS:b.test",), key="rsa"),
        ip_only=issue(ca, "ip", ("IP:127.0.0.1",)),
        odd_sans=issue(
            ca,
            "odd",
            (
                "DNS:Upper.Example.TEST",
                "DNS:w*.example.test",
                "DNS:a.*.example.test",
                "DNS:trailing.dot.",
                "DNS:under_score.test",
                "IP:10.0.0.1",
                "DNS:upper.example.test",
            ),
        ),
        chain_leaf=issue(ca, "leaf", ("DNS:leaf.test",), signer=(inter_cert, inter_key)),
        chain_inter=inter_cert.read_text(),
        weak=issue(ca, "weak", ("DNS:weak.test",), key="rsa1024"),
        ed=issue(ca, "ed", ("DNS:ed.test",), key="ed25519"),
        sha1=issue(ca, "sha1", ("DNS:sha1.test",), digest="sha1"),
    )


def pem(*parts: str) -> bytes:
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts).encode()


def ok(name: str, data: bytes, **kw: int) -> CertFile:
    result = load_cert(name, data, **kw)  # type: ignore[arg-type]
    assert isinstance(result, CertFile), result
    return result


def refused(name: str, data: bytes, **kw: int) -> str:
    result = load_cert(name, data, **kw)  # type: ignore[arg-type]
    assert isinstance(result, Refused), result
    return result.reason


# -- one file -------------------------------------------------------------------------


def test_valid_file_gives_names_fingerprint_not_after_and_a_safe_payload(m: Material) -> None:
    """A chain+key file yields its DNS SANs, openssl's SHA-1 fingerprint and notAfter, and
    a PEM that passes the runtime payload check."""
    cert_pem, key_pem = m.a
    cert = ok("a.pem", pem(cert_pem, key_pem))
    assert cert.names == ("a.test", "*.wild.test")
    assert cert.fingerprint == fingerprint(cert_pem)
    end = subprocess.run(
        [OPENSSL, "x509", "-noout", "-enddate"],
        input=cert_pem,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    parsed = datetime.strptime(end.partition("=")[2], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
    assert cert.not_after == parsed
    check_pem_payload(cert.pem)
    assert "\n\n" not in cert.pem and not cert.pem.endswith("\n")
    assert cert.pem.count("BEGIN CERTIFICATE") == 1 and "PRIVATE KEY" in cert.pem


def test_digest_ignores_formatting_but_not_content(m: Material) -> None:
    """CRLF, blank lines, text outside the armour and the key's position do not change
    the digest; another certificate does."""
    cert_pem, key_pem = m.a
    plain = ok("a.pem", pem(cert_pem, key_pem))
    messy = ("Bag Attributes\n  localKeyID: 01\n\n" + key_pem + "\n\n" + cert_pem).replace(
        "\n", "\r\n"
    )
    assert ok("a.pem", messy.encode()).digest == plain.digest
    other = ok("b.pem", pem(*m.b))
    assert other.digest != plain.digest


def test_chain_is_kept_in_order_after_the_leaf(m: Material) -> None:
    """Leaf then intermediate is served with both certificates, leaf first."""
    leaf_pem, key_pem = m.chain_leaf
    cert = ok("leaf.pem", pem(leaf_pem, m.chain_inter, key_pem))
    assert cert.pem.count("BEGIN CERTIFICATE") == 2
    assert cert.fingerprint == fingerprint(leaf_pem)


def test_rsa_key_is_accepted(m: Material) -> None:
    """An RSA 2048 key in PKCS#8 as openssl writes it is served."""
    assert ok("b.pem", pem(*m.b)).names == ("b.test",)


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("garbage", "no certificate"),
        ("empty", "no certificate"),
        ("cert_only", "no private key"),
        ("key_only", "no certificate"),
        ("wrong_key", "does not match"),
        ("chain_first", "matches certificate #2"),
        ("two_keys", "2 private keys"),
        ("encrypted", "encrypted"),
        ("weak_rsa", "RSA key of 1024 bits"),
        ("ed25519", "only RSA and ECDSA"),
        ("sha1", "signed with SHA1"),
        ("binary", "not PEM text"),
        ("unclosed", "not closed"),
        ("header", "PEM header"),
        ("bad_base64", "not valid base64"),
        ("stray_end", "outside a PEM block"),
        ("other_block", "unexpected PEM block"),
        ("broken_cert", "does not parse"),
    ],
)
def test_bad_files_are_refused_with_a_reason(
    m: Material, tmp_path: Path, case: str, expect: str
) -> None:
    """Every kind of bad file is a Refused naming why, never an exception."""
    cert_pem, key_pem = m.a
    b_key = m.b[1]
    leaf, leaf_key = m.chain_leaf
    body = cert_pem.splitlines()[1]
    data = {
        "garbage": b"hello world\n",
        "empty": b"",
        "cert_only": pem(cert_pem),
        "key_only": pem(key_pem),
        "wrong_key": pem(cert_pem, b_key),
        "chain_first": pem(m.chain_inter, leaf, leaf_key),
        "two_keys": pem(cert_pem, key_pem, key_pem),
        "encrypted": pem(cert_pem, encrypt_key(key_pem, tmp_path)),
        "weak_rsa": pem(*m.weak),
        "ed25519": pem(*m.ed),
        "sha1": pem(*m.sha1),
        "binary": b"\x30\x82\x01\x0a" + bytes(range(200)),
        "unclosed": pem(cert_pem, key_pem).rsplit(b"-----END", 1)[0],
        "header": pem(
            cert_pem,
            key_pem.replace("-----\n", "-----\nProc-Type: 4,ENCRYPTED\n", 1),
        ),
        "bad_base64": pem(cert_pem.replace(body, body[:-4] + "!!!!"), key_pem),
        "stray_end": b"-----END CERTIFICATE-----\n" + pem(cert_pem, key_pem),
        "other_block": pem(
            cert_pem, key_pem, "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----"
        ),
        "broken_cert": pem(
            "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----", key_pem
        ),
    }[case]
    assert expect in refused("a.pem", data)


def test_oversized_pem_is_refused(m: Material) -> None:
    """A file whose PEM would not fit one runtime payload is refused, naming the limit."""
    data = pem(*m.a)
    assert ok("a.pem", data)
    assert "more than 500" in refused("a.pem", data, max_pem=500)


@pytest.mark.parametrize(
    "name", ["a b.pem", "a#.pem", "a'.pem", 'a".pem', "a\n.pem", "-a.pem", "a.PEM.txt", "é.pem"]
)
def test_unsafe_file_names_are_refused(m: Material, name: str) -> None:
    """A file name that could not be written safely into the crt-list is refused."""
    assert "file name" in refused(name, pem(*m.a))


def test_only_ip_sans_give_no_sni_name(m: Material) -> None:
    """IP SANs are never SNI names (RFC 6066): such a certificate has no name."""
    assert ok("ip.pem", pem(*m.ip_only)).names == ()


def test_unusable_sans_are_dropped_and_reported(m: Material) -> None:
    """Upper case is lowered (and deduplicated); partial/inner wildcards and a trailing
    dot are dropped with a reason; IP SANs are ignored."""
    cert = ok("odd.pem", pem(*m.odd_sans))
    assert cert.names == ("upper.example.test", "under_score.test")
    assert len(cert.dropped) == 3
    assert any("w*.example.test" in d for d in cert.dropped)


@pytest.mark.parametrize(
    ("san", "name"),
    [
        ("www.example.com", "www.example.com"),
        ("WWW.Example.COM", "www.example.com"),
        ("*.example.com", "*.example.com"),
        ("localhost", "localhost"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("*", None),
        ("*.", None),
        ("w*.example.com", None),
        ("a.*.example.com", None),
        ("example.com.", None),
        ("-bad.example.com", None),
        ("a" * 64 + ".example.com", None),
        ("a b.example.com", None),
        ("a#b.example.com", None),
        ("bücher.example", None),
        ("", None),
    ],
)
def test_sni_name_table(san: str, name: str | None) -> None:
    """What a DNS SAN becomes as a crt-list filter."""
    assert sni_name(san)[0] == name


@pytest.mark.parametrize(
    "path", ["relative/a.pem", "/a b.pem", "/a#.pem", "/a\n.pem", "/a/../b.pem", "/a'.pem"]
)
def test_unsafe_paths_are_refused(path: str) -> None:
    """No path with a space, newline, '#', quote or '..' can reach the crt-list."""
    with pytest.raises(ValueError, match="unsafe"):
        check_path(path)


def test_read_cert_dir_ignores_non_candidates_and_reports_refusals(
    m: Material, tmp_path: Path
) -> None:
    """*.pem files are read (valid or refused); hidden files, other extensions and
    directories are ignored; a missing directory is a refusal, not an exception."""
    (tmp_path / "a.pem").write_bytes(pem(*m.a))
    (tmp_path / "bad.pem").write_text("nope")
    (tmp_path / ".a.pem.swp").write_text("x")
    (tmp_path / "a.key").write_text(m.a[1])
    (tmp_path / "sub.pem").mkdir()
    (tmp_path / "odd name.pem").write_bytes(pem(*m.b))
    scan = read_cert_dir(str(tmp_path))
    assert set(scan.certs) == {"a.pem"}
    assert {r.name for r in scan.refused} == {"bad.pem", "odd name.pem"}
    missing = read_cert_dir(str(tmp_path / "none"))
    assert not missing.certs and len(missing.refused) == 1


# -- the crt-list -----------------------------------------------------------------------


def fake(name: str, *names: str, digest: str = "") -> CertFile:
    return CertFile(
        name=name,
        source=f"/certs/{name}",
        names=names,
        digest=digest or f"d-{name}",
        fingerprint="F",
        not_after=datetime(2030, 1, 1, tzinfo=UTC),
        pem="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
    )


def crt(*certs: CertFile) -> CrtList:
    built = build_crt_list({c.name: c for c in certs}, STAGE)
    return built.crt_list


def test_default_pem_comes_first_else_first_by_name() -> None:
    """default.pem heads the list when present, otherwise the first file by name."""
    with_default = crt(
        fake("b.pem", "b.test"), fake("default.pem", "d.test"), fake("a.pem", "a.test")
    )
    assert [e.cert.name for e in with_default.entries] == ["default.pem", "a.pem", "b.pem"]
    without = crt(fake("c.pem", "c.test"), fake("b.pem", "b.test"))
    assert [e.cert.name for e in without.entries] == ["b.pem", "c.pem"]


def test_crt_list_text_has_paths_and_filters_and_a_final_newline() -> None:
    """Each line is '<stage>/<file> <names...>'; a default without names gets '!*'."""
    text = crt(fake("default.pem"), fake("a.pem", "a.test", "*.wild.test")).text()
    assert text == (f"{STAGE}/default.pem !*\n{STAGE}/a.pem a.test *.wild.test\n")


def test_a_name_claimed_twice_stays_with_the_first_file() -> None:
    """The first file in list order keeps a shared name; the other is served without it
    (warned), or refused when nothing is left."""
    built = build_crt_list(
        {
            c.name: c
            for c in (
                fake("default.pem", "d.test"),
                fake("a.pem", "x.test", "a.test"),
                fake("b.pem", "x.test", "b.test"),
                fake("c.pem", "a.test"),
            )
        },
        STAGE,
    )
    lines = built.crt_list.text().splitlines()
    assert lines[1:] == [f"{STAGE}/a.pem x.test a.test", f"{STAGE}/b.pem b.test"]
    assert any("b.pem: served without x.test" in w for w in built.warnings)
    assert [(r.name, "a.pem" in r.reason) for r in built.refused] == [("c.pem", True)]


def test_a_non_default_file_without_names_is_refused() -> None:
    """Only the default may have no SNI name."""
    built = build_crt_list({c.name: c for c in (fake("a.pem", "a.test"), fake("z.pem"))}, STAGE)
    assert [r.name for r in built.refused] == ["z.pem"]
    assert "no DNS name" in built.refused[0].reason


def test_merge_keeps_the_running_version_of_a_refused_file() -> None:
    """A refused file that HAProxy serves stays at its served version; a refused new file
    is simply absent; content HAProxy rejected is refused until it changes."""
    running = fake("a.pem", "a.test", digest="old")
    scan = Scan(
        {"b.pem": fake("b.pem", "b.test", digest="rejected"), "c.pem": fake("c.pem", "c.test")},
        (Refused("a.pem", "the private key does not match"), Refused("n.pem", "garbage")),
    )
    wanted, refusals = merge(scan, {"a.pem": running}, {"b.pem": ("rejected", "no")})
    assert wanted == {"a.pem": running, "c.pem": scan.certs["c.pem"]}
    assert [r.name for r in refusals] == ["a.pem", "b.pem", "n.pem"]
    wanted, _ = merge(scan, {}, {"b.pem": ("older", "no")})
    assert set(wanted) == {"b.pem", "c.pem"}


def test_an_unlistable_directory_takes_nothing_away(tmp_path: Path) -> None:
    """CERT_DIR gone (an unmounted volume): everything served stays, with a refusal."""
    running = {"a.pem": fake("a.pem", "a.test"), "b.pem": fake("b.pem", "b.test")}
    scan = read_cert_dir(str(tmp_path / "gone"))
    wanted, refusals = merge(scan, running)
    assert wanted == running
    assert "cannot list" in refusals[0].reason


# -- the runtime plan -------------------------------------------------------------------


def commands(before: CrtList, after: CrtList) -> list[str]:
    plan = plan_changes(before, after, LIST)
    assert plan.reload is None, plan.why
    return [f"{op.command}{' <<' if op.payload else ''}" for s in plan.steps for op in s.ops]


D = fake("default.pem", "d.test")


def test_new_certificate_is_new_set_commit_add() -> None:
    """A new file: new ssl cert, set (payload), commit, add to the crt-list (payload)."""
    b = fake("b.pem", "b.test")
    plan = plan_changes(crt(D), crt(D, b), LIST)
    (step,) = plan.steps
    assert [(o.command, o.expect) for o in step.ops] == [
        (f"new ssl cert {STAGE}/b.pem", f"New empty certificate store '{STAGE}/b.pem'!"),
        (f"set ssl cert {STAGE}/b.pem", f"Transaction created for certificate {STAGE}/b.pem!"),
        (f"commit ssl cert {STAGE}/b.pem", "Success!"),
        (f"add ssl crt-list {LIST}", "Success!"),
    ]
    assert step.ops[1].payload == b.pem
    assert step.ops[3].payload == f"{STAGE}/b.pem b.test"


def test_changed_content_is_set_and_commit() -> None:
    """Same names, new content: set + commit only (the default too)."""
    before = crt(D, fake("b.pem", "b.test"))
    after = crt(fake("default.pem", "d.test", digest="new"), fake("b.pem", "b.test", digest="2"))
    assert commands(before, after) == [
        f"set ssl cert {STAGE}/b.pem <<",
        f"commit ssl cert {STAGE}/b.pem",
        f"set ssl cert {STAGE}/default.pem <<",
        f"commit ssl cert {STAGE}/default.pem",
    ]


def test_changed_names_replace_the_crt_list_line() -> None:
    """New SNI names for the same file: del ssl crt-list, then add the new line."""
    before = crt(D, fake("b.pem", "b.test"))
    after = crt(D, fake("b.pem", "b.test", "c.test"))
    plan = plan_changes(before, after, LIST)
    assert [op.command for op in plan.steps[0].ops] == [
        f"del ssl crt-list {LIST} {STAGE}/b.pem",
        f"add ssl crt-list {LIST}",
    ]
    assert plan.steps[0].ops[1].payload == f"{STAGE}/b.pem b.test c.test"


def test_removed_certificate_is_del_crt_list_then_del_cert() -> None:
    """A removed file leaves the crt-list first, then its store is deleted."""
    assert commands(crt(D, fake("b.pem", "b.test")), crt(D)) == [
        f"del ssl crt-list {LIST} {STAGE}/b.pem",
        f"del ssl cert {STAGE}/b.pem",
    ]


def test_steps_add_before_they_remove() -> None:
    """A name moving from a removed file to a new one is added first, removed last."""
    plan = plan_changes(crt(D, fake("b.pem", "x.test")), crt(D, fake("c.pem", "x.test")), LIST)
    assert [(s.kind, s.name) for s in plan.steps] == [("add", "c.pem"), ("remove", "b.pem")]


@pytest.mark.parametrize(
    ("before", "after", "why"),
    [
        ((), (fake("a.pem", "a.test"),), "first certificate"),
        ((fake("a.pem", "a.test"),), (), "no certificate left"),
        (
            (fake("b.pem", "b.test"),),
            (fake("a.pem", "a.test"), fake("b.pem", "b.test")),
            "now a.pem",
        ),
        ((D, fake("b.pem", "b.test")), (fake("b.pem", "b.test"),), "now b.pem"),
        ((D,), (fake("default.pem", "d.test", "e.test"),), "changed names"),
    ],
)
def test_what_the_runtime_api_cannot_do_is_a_reload(
    before: tuple[CertFile, ...], after: tuple[CertFile, ...], why: str
) -> None:
    """First or last certificate, another default, or the default's names: a reload."""
    plan = plan_changes(crt(*before), crt(*after), LIST)
    assert plan.reload == RELOAD_REASON and not plan.steps
    assert why in plan.why


def test_nothing_changed_is_an_empty_plan() -> None:
    """Equal lists plan nothing."""
    plan = plan_changes(crt(D, fake("b.pem", "b.test")), crt(D, fake("b.pem", "b.test")), LIST)
    assert not plan.steps and plan.reload is None and plan.summary() == "no change"
