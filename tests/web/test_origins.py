"""Where a request says it comes from (`Origin`, else `Referer`), the user origin's own origins,
and the declared launching origins as the configuration reads them."""

from __future__ import annotations

import pytest

from drimbox.config import ConfigError, load_config, web_origin
from drimbox.web.origins import SameOriginPosts, request_origin


def test_request_origin_reads_origin_then_referer() -> None:
    assert request_origin({"origin": "https://RIS.exemple.fr"}) == "https://ris.exemple.fr"
    assert request_origin({"origin": "null", "referer": "https://a.fr/x"}) == "null"
    assert request_origin({"referer": "https://a.fr:443/page?x=1"}) == "https://a.fr"
    assert request_origin({"origin": " ", "referer": "http://b.fr:8080/"}) == "http://b.fr:8080"
    assert request_origin({}) == "" and request_origin({"referer": "about:blank"}) == ""


def test_same_origin_is_the_public_url_or_the_host_reached() -> None:
    check = SameOriginPosts(lambda *_: None, public_url="https://vi.exemple.fr/")  # type: ignore[arg-type,return-value]
    assert check.allowed("https://vi.exemple.fr", "proxy.interne:8081")
    assert check.allowed("http://127.0.0.1:8081", "127.0.0.1:8081")
    assert check.allowed("https://vi2.exemple.fr", "VI2.exemple.fr")
    for origin, host in (
        ("https://attaque.test", "vi.exemple.fr"),
        ("null", "vi.exemple.fr"),
        ("", "vi.exemple.fr"),
        ("http://127.0.0.1:9999", "127.0.0.1:8081"),
        ("https://vi.exemple.fr.attaque.test", "vi.exemple.fr"),
    ):
        assert not check.allowed(origin, host), (origin, host)


def test_launch_origins_are_read_as_browsers_write_them() -> None:
    environ = {"DRIMBOX_CONSO__LAUNCH_ORIGINS": "https://DPI.hopital.fr:443, http://ris:8080/,null"}
    origins = load_config(environ=environ).conso.launch_origins
    assert origins == ["https://dpi.hopital.fr", "http://ris:8080", "null"]
    assert load_config(environ={}).conso.launch_origins == []
    for bad in ("ris.hopital.fr", "https://ris.fr/lancer", "file:///tmp/x.html"):
        with pytest.raises(ConfigError, match="origine invalide"):
            load_config(environ={"DRIMBOX_CONSO__LAUNCH_ORIGINS": bad})
    assert web_origin("http://[::1]:80/x") == "http://[::1]"


def test_iid_professions_are_profession_codes() -> None:
    assert load_config(
        environ={"DRIMBOX_VIEWER__IID_PROFESSIONS": "10,40"}
    ).viewer.iid_professions == ["10", "40"]
    with pytest.raises(ConfigError, match="code profession"):
        load_config(environ={"DRIMBOX_VIEWER__IID_PROFESSIONS": "medecin"})
