"""The service's web page, end to end in headless Chromium (Debian's /usr/bin/chromium driven by Playwright):
pick a series from a real Orthanc, scroll, change the window, click/right-click/drag, see the overlay and the
measurements, propagate (a job with progress), save to the PACS, correct the 3D result on another slice, download
it, cancel a propagation, take a click's other size on a slice and on a 3D result. Leaves screenshots in
test-artifacts/webpage.png and webpage-job.png."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from oncoseg_server import OncoSegServer
from orthanc import OrthancServer, upload_example_ct
from PIL import Image

from oncoseg.io import load_image
from oncoseg.render import CT_PRESETS
from oncoseg.service.core import rle_decode

pytestmark = pytest.mark.service

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TOKEN = "webpage-token-0123456789abcdef"
LIVER_POINT = (156, 303)  # inside the liver on slice 10 of the example CT (image pixels)
LIVER_BOX = (107, 196, 269, 374)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, shared_data):
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as orthanc:
        orthanc.series_uid = upload_example_ct(orthanc, tmp_path_factory.mktemp("ct"))
        yield orthanc


@pytest.fixture(scope="module")
def server(tmp_path_factory, pacs):
    serve = tmp_path_factory.mktemp("serve")
    with OncoSegServer(serve, "--pacs", pacs.url, "--threads", "1", token=TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        raise RuntimeError(f"{CHROMIUM} not found: apt-get install chromium (scripts/system-deps.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def wait_until(page, expression: str, timeout: float = 30_000) -> None:
    """Poll ``expression`` until it is truthy. Playwright's wait_for_function evaluates its predicate with
    eval() inside the page, which the page's Content-Security-Policy forbids; evaluate() does not."""
    import time

    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout / 1000:.0f} s: {expression}")
        page.wait_for_timeout(100)


def canvas_pixel(page, x: float, y: float) -> list[int]:
    return page.evaluate(
        "([x, y]) => Array.from(document.getElementById('canvas').getContext('2d').getImageData(x, y, 1, 1).data)",
        [x, y],
    )


def test_page_asks_for_the_token(server, browser):
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#token-box", state="visible", timeout=30_000)
    page.fill("#token-input", TOKEN)
    page.click("#token-save")
    page.wait_for_selector("#series-list button", timeout=30_000)
    page.close()


def test_segment_propagate_and_save_in_the_browser(server, pacs, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 820})
    violations = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    prompts, jobs = [], []
    page.on(
        "request",
        lambda r: prompts.append(json.loads(r.post_data)) if r.url.endswith("/segment") else None,
    )
    page.on(
        "request",
        lambda r: (
            jobs.append(json.loads(r.post_data)) if r.method == "POST" and r.url.endswith("/jobs") else None
        ),
    )
    page.goto(f"{server.url}/#token={TOKEN}")
    page.click(f'#series-list button[data-series-uid="{pacs.series_uid}"]', timeout=60_000)
    wait_until(page, "document.getElementById('status').textContent.startsWith('Open:')", timeout=120_000)
    # opens on the middle slice, z = 10 (numbered from 0)
    assert page.text_content("#slice-label") == "10 / 19"
    assert "token=" not in page.url  # the token left the address bar
    windows = page.evaluate(
        "Array.from(document.querySelectorAll('#window-select option')).map(o => o.value)"
    )
    assert windows == ["", *CT_PRESETS, "auto"]  # the presets come from /api/windows

    canvas = page.locator("#canvas").bounding_box()
    scale = canvas["width"] / 512

    def at(x, y):
        return canvas["x"] + (x + 0.5) * scale, canvas["y"] + (y + 0.5) * scale

    # scroll and change the window: the picture changes
    before = page.evaluate("document.getElementById('canvas').toDataURL()")
    page.mouse.move(*at(256, 256))
    page.mouse.wheel(0, 120)
    wait_until(page, "document.getElementById('slice-label').textContent === '11 / 19'")
    page.keyboard.press("ArrowDown")
    wait_until(page, "document.getElementById('slice-label').textContent === '10 / 19'")
    page.select_option("#window-select", "lung")
    wait_until(page, f"document.getElementById('canvas').toDataURL() !== {json.dumps(before)}")
    page.select_option("#window-select", "soft-tissue")  # the default window for CT: same picture again
    wait_until(page, f"document.getElementById('canvas').toDataURL() === {json.dumps(before)}")

    # left click inside the liver → mask overlay and measurements
    def segmented():
        return page.expect_response(lambda r: r.url.endswith("/segment"), timeout=120_000)

    before_click = page.evaluate("document.getElementById('canvas').toDataURL()")
    with segmented() as response:
        page.mouse.click(*at(*LIVER_POINT))
    assert response.value.status == 200
    wait_until(page, "document.querySelector('td[data-field=area]').textContent.includes('mm²')")
    assert "mm" in page.text_content("td[data-field=long]") and page.text_content("#latency").endswith(" ms")
    quality = page.text_content("td[data-field=quality]")  # the result's quality estimate, or REVIEW and why
    assert quality.startswith(("REVIEW 0.", "0.", "1.0")), quality
    # a pixel of the returned mask away from the click marker: grey before, tinted red now
    mask = rle_decode(response.value.json()["mask"])
    ys, xs = np.nonzero(mask)
    far = np.hypot(xs - LIVER_POINT[0], ys - LIVER_POINT[1]) > 10
    x, y = int(xs[far][0]), int(ys[far][0]) + 2
    assert mask[y, x]
    probe = ((x + 0.5) * scale, (y + 0.5) * scale)
    grey = page.evaluate(
        """([url, x, y]) => new Promise((resolve) => {
            const img = new Image();
            img.onload = () => {
                const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
                const g = c.getContext('2d'); g.drawImage(img, 0, 0);
                resolve(Array.from(g.getImageData(x, y, 1, 1).data));
            };
            img.src = url;
        })""",
        [before_click, *probe],
    )
    tinted = canvas_pixel(page, *probe)
    assert abs(grey[0] - grey[1]) < 5 and tinted[0] - tinted[1] > 30, (grey, tinted)  # red overlay on grey CT

    # right click = exclude, then drag a box
    with segmented() as response:
        page.mouse.click(*at(250, 330), button="right")
    assert response.value.status == 200
    with segmented() as response:
        page.mouse.move(*at(*LIVER_BOX[:2]))
        page.mouse.down()
        page.mouse.move(*at(200, 300), steps=4)
        page.mouse.move(*at(*LIVER_BOX[2:]), steps=4)
        page.mouse.up()
    assert response.value.status == 200
    # the page draws the PNG overlay, so it asks for no polygon outlines
    assert prompts[0] == {
        "z": 10, "points": [{"x": 156, "y": 303, "positive": True}], "box": None, "contours": False
    }  # fmt: skip
    assert prompts[1]["points"][1] == {"x": 250, "y": 330, "positive": False}
    assert np.abs(np.subtract(prompts[-1]["box"], LIVER_BOX)).max() <= 1  # mouse positions round to pixels

    # propagate one slice each way (a job: progress, then the result), then save an RTSTRUCT to the PACS
    page.fill("#max-slices", "1")
    page.click("#propagate-btn")
    wait_until(page, "document.getElementById('status').textContent.startsWith('3D result')", timeout=180_000)
    assert page.text_content("td[data-field=volume]").endswith(" mL")
    assert page.text_content("td[data-field=slices]") == "9–11"
    shown = page.text_content("td[data-field=quality]")  # the volume's own estimate (flagged or not)
    assert shown.startswith(("REVIEW 0.", "0.", "1.0")), shown
    assert jobs[0] == {"action": "propagate", "z": 10, "points": prompts[1]["points"], "box": prompts[-1]["box"],
                       "max_slices": 1}  # fmt: skip
    assert page.text_content("#job-label") == "3 / 3 slices" and page.is_hidden("#job-box")
    assert page.text_content("td[data-field=score]") != "–"  # the slice's own score in the 3D result
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webpage.png"))

    page.select_option("#save-format", "rtstruct")
    page.fill("#save-name", "Liver")
    page.click("#save-btn")
    wait_until(page, "document.getElementById('save-result').textContent.includes('Stored')", timeout=120_000)
    modalities = [s["MainDicomTags"].get("Modality") for s in httpx.get(f"{pacs.url}/series?expand").json()]
    assert sorted(modalities) == ["CT", "RTSTRUCT"]

    # a click on another slice of the 3D result corrects it there and propagates again from it (a job)
    image_id = page.evaluate("state.image.image_id")
    page.keyboard.press("ArrowUp")
    wait_until(page, "document.getElementById('slice-label').textContent === '11 / 19'")
    page.mouse.click(*at(*LIVER_POINT))
    wait_until(
        page, "document.getElementById('status').textContent.includes('corrected on slice 11')", 180_000
    )
    assert jobs[-1] == {"action": "refine", "z": 11, "points": [{"x": 156, "y": 303, "positive": True}],
                        "box": None}  # fmt: skip
    with server.client() as client:
        measured = client.get(f"/api/images/{image_id}/measurements").json()
        assert measured["anchors"] == [10, 11] and measured["kind"] == "volume"
        corrected = np.stack([
            np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{image_id}/result/{z}").content)).convert("RGBA"))[..., 3] > 0
            for z in range(20)
        ])  # fmt: skip

    # download the result as NIfTI: the server's mask on the image's grid
    with page.expect_download(timeout=60_000) as download:
        page.click("#download-btn")
    assert download.value.suggested_filename == "oncoseg-result.nii.gz"
    download.value.save_as(tmp_path / "label.nii.gz")
    label = load_image(tmp_path / "label.nii.gz")
    assert label.shape == (20, 512, 512)
    np.testing.assert_array_equal(label.array > 0, corrected)

    # a new propagation through the whole volume, cancelled once it has finished a slice: the page shows the
    # job's slices as they finish, and the result stays what it was (the box on slice 11)
    overlays = []
    page.on(
        "request", lambda r: overlays.append(r.url) if "/jobs/" in r.url and "/result/" in r.url else None
    )
    page.click("#clear-btn")
    with segmented() as response:
        page.mouse.move(*at(*LIVER_BOX[:2]))
        page.mouse.down()
        page.mouse.move(*at(*LIVER_BOX[2:]), steps=4)
        page.mouse.up()
    assert response.value.status == 200
    page.fill("#max-slices", "")
    page.click("#propagate-btn")
    wait_until(
        page,
        "!document.getElementById('job-box').hidden && parseInt(document.getElementById('job-label').textContent) >= 2",
        180_000,
    )
    page.screenshot(path=str(ARTIFACTS / "webpage-job.png"))  # the progress bar and its Cancel button
    page.click("#cancel-btn")
    wait_until(page, "document.getElementById('status').textContent.startsWith('Cancelled')", 180_000)
    assert jobs[-1]["action"] == "propagate" and jobs[-1]["max_slices"] is None
    assert any(url.endswith("/result/11") for url in overlays)  # the finished start slice was drawn
    with server.client() as client:
        measured = client.get(f"/api/images/{image_id}/measurements").json()
    assert measured["kind"] == "slice" and measured["z"] == 11
    assert violations == []  # the page works under its own Content-Security-Policy
    page.close()


def test_ready_bar_and_other_sizes_in_the_browser(server, pacs, browser):
    """Showing a slice makes the server encode it and its neighbours: the bar under the slider lists them; a
    click's other answers enable Smaller / Larger, which swap the mask in place."""
    page = browser.new_page(viewport={"width": 1400, "height": 820})
    chosen = []
    page.on(
        "request", lambda r: chosen.append(json.loads(r.post_data)) if r.url.endswith("/choose") else None
    )
    page.goto(f"{server.url}/#token={TOKEN}")
    page.click(f'#series-list button[data-series-uid="{pacs.series_uid}"]', timeout=60_000)
    wait_until(page, "document.getElementById('status').textContent.startsWith('Open:')", timeout=120_000)
    # slice 10 on screen: it is encoded first, then 11 and 9 (the bar lists the ready slices)
    wait_until(
        page,
        "['9', '10', '11'].every(z => (document.getElementById('ready-bar').dataset.ready || '').split(',')"
        ".includes(z))",
        timeout=180_000,
    )
    assert page.is_disabled("#smaller-btn") and page.is_disabled("#larger-btn")
    canvas = page.locator("#canvas").bounding_box()
    scale = canvas["width"] / 512
    with page.expect_response(lambda r: r.url.endswith("/segment"), timeout=120_000) as response:
        page.mouse.click(
            canvas["x"] + (LIVER_POINT[0] + 0.5) * scale, canvas["y"] + (LIVER_POINT[1] + 0.5) * scale
        )
    answer = response.value.json()
    assert answer["embedding_cached"]  # encoded ahead while the slice was on screen
    offered = answer["alternatives"]
    wait_until(page, "document.querySelector('td[data-field=area]').textContent.includes('mm²')")
    assert page.is_disabled("#smaller-btn") == (offered["smaller"] == 0)
    assert page.is_disabled("#larger-btn") == (offered["larger"] == 0)
    which = "larger" if offered["larger"] else "smaller"
    assert offered[which] > 0, offered  # LiteMedSAM offers another size for a click in the liver
    area = page.text_content("td[data-field=area]")
    with page.expect_response(lambda r: r.url.endswith("/choose"), timeout=120_000) as response:
        page.click(f"#{which}-btn")
    assert response.value.status == 200 and chosen == [{"which": which, "z": 10, "contours": False}]
    wait_until(
        page, f"document.getElementById('status').textContent === 'Took the {which} answer on slice 10'"
    )
    assert page.text_content("td[data-field=area]") != area
    other = "smaller" if which == "larger" else "larger"
    assert not page.is_disabled(f"#{other}-btn")  # the replaced mask is now an answer the other way
    page.close()


def test_other_sizes_of_a_3d_result_in_the_browser(server, pacs, browser):
    """After Propagate 3D from a click, Smaller / Larger offer the start slice's other sizes (off on a slice
    without any); a press shows the page working while the server walks the volume again from that slice, then
    the new volume as the server measures it."""
    page = browser.new_page(viewport={"width": 1400, "height": 820})
    chosen, held = [], []
    page.on(
        "request", lambda r: chosen.append(json.loads(r.post_data)) if r.url.endswith("/choose") else None
    )
    # a /choose is held until the page's working state is checked, then sent on unchanged
    page.route("**/choose", lambda route: held.append(route))
    page.goto(f"{server.url}/#token={TOKEN}")
    page.click(f'#series-list button[data-series-uid="{pacs.series_uid}"]', timeout=60_000)
    wait_until(page, "document.getElementById('status').textContent.startsWith('Open:')", timeout=120_000)
    canvas = page.locator("#canvas").bounding_box()
    scale = canvas["width"] / 512
    with page.expect_response(lambda r: r.url.endswith("/segment"), timeout=120_000):
        page.mouse.click(
            canvas["x"] + (LIVER_POINT[0] + 0.5) * scale, canvas["y"] + (LIVER_POINT[1] + 0.5) * scale
        )
    wait_until(page, "document.querySelector('td[data-field=area]').textContent.includes('mm²')")
    page.fill("#max-slices", "2")
    page.click("#propagate-btn")
    wait_until(page, "document.getElementById('status').textContent.startsWith('3D result')", timeout=180_000)
    image_id = page.evaluate("state.image.image_id")
    with server.client() as client:
        offered = client.get(f"/api/images/{image_id}/alternatives/10").json()
        elsewhere = client.get(f"/api/images/{image_id}/alternatives/11").json()
        outside = client.get(f"/api/images/{image_id}/alternatives/20")
    assert elsewhere == {"z": 11, "smaller": 0, "larger": 0}  # the walk's slices offer no other size
    assert outside.status_code == 422
    assert outside.json()["detail"] == "slice 20 is outside the volume (slices 0..19)"
    which = "larger" if offered["larger"] else "smaller"
    assert offered[which] > 0, offered  # the click's other sizes on the start slice
    wait_until(page, f"!document.getElementById('{which}-btn').disabled")
    assert page.is_disabled("#smaller-btn") == (offered["smaller"] == 0)
    page.keyboard.press("ArrowUp")  # a slice the walk reached: no other size there
    wait_until(page, "document.getElementById('slice-label').textContent === '11 / 19'")
    wait_until(
        page,
        "document.getElementById('smaller-btn').disabled && document.getElementById('larger-btn').disabled",
    )
    page.keyboard.press("ArrowDown")
    wait_until(page, f"!document.getElementById('{which}-btn').disabled")

    volume = page.text_content("td[data-field=volume]")
    assert volume.endswith(" mL")
    page.click(f"#{which}-btn")
    for _ in range(300):  # the request reaches the route (events are handled while the test waits)
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "the page sent no /choose"
    working = page.evaluate(
        "[document.getElementById('status').textContent, document.getElementById('job-box').hidden,"
        " document.getElementById('job-label').textContent, document.getElementById('smaller-btn').disabled,"
        " document.getElementById('larger-btn').disabled]"
    )
    assert working == [
        f"Taking the {which} answer on slice 10 and walking the volume again…", False,
        "walking the volume again…", True, True,
    ], working  # fmt: skip
    with page.expect_response(lambda r: r.url.endswith("/choose"), timeout=120_000) as response:
        held[0].continue_()
    assert response.value.status == 200 and chosen == [{"which": which, "z": 10, "contours": False}]
    wait_until(page, "document.getElementById('status').textContent.startsWith('Took the')", timeout=120_000)
    assert page.text_content("#status") == f"Took the {which} answer on slice 10 (volume walked again)"
    assert page.is_hidden("#job-box")
    with server.client() as client:
        measured = client.get(f"/api/images/{image_id}/measurements").json()
    assert measured["kind"] == "volume" and measured["anchors"] == [10]
    shown = page.text_content("td[data-field=volume]")
    assert shown != volume and shown == f"{measured['measurements']['volume_ml']:.1f} mL", (volume, shown)
    assert page.text_content("td[data-field=slices]") == f"{measured['slices'][0]}–{measured['slices'][1]}"
    other = "smaller" if which == "larger" else "larger"
    assert not page.is_disabled(f"#{other}-btn")  # the replaced size is now an answer the other way
    page.close()
