"""The web page in a real headless browser (Debian's chromium + chromedriver, driven by Selenium).

Uploads real photos through the page's file inputs and checks what a person would see: the
decision, one box per face, the gallery's best match with its picture. Skipped, with the reason,
where the browser is not installed (`.ci/run` installs it).
"""

from __future__ import annotations

import base64
import shutil

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("faiss", reason="the gallery extra is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("no chromium/chromedriver on this machine (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serve_support import API_KEY, live_server, make_service, photo  # noqa: E402

from irface.serve import create_app  # noqa: E402

WAIT_S = 120  # a loaded 2-core machine; the waits end as soon as the page shows the result


pytestmark = pytest.mark.slow  # a server subprocess and a browser


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1200,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver, element_id: str, starts: str) -> str:
    """The element's text once it starts with `starts` (or shows an error, which fails the test)."""
    def ready(d):
        node = d.find_element(By.ID, element_id)
        text = node.text
        if "error" in (node.get_attribute("class") or ""):
            raise AssertionError(f"#{element_id} shows an error: {text}")
        return text if text.startswith(starts) else False

    return WebDriverWait(driver, WAIT_S).until(ready)


def _boxes(driver, figure_id: str) -> list[dict]:
    boxes = driver.find_elements(By.CSS_SELECTOR, f"#{figure_id} .box")
    return [b.rect for b in boxes]


def test_the_page_compares_two_photos_enrols_and_searches(tmp_path, browser):
    service = make_service(tmp_path / "faces.gallery")
    with live_server(create_app(service, api_key=API_KEY)) as url:
        browser.get(url + "/")
        WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "status").get_attribute("data-ready"))

        # Two photos of one person: "Same person", a box on each face.
        browser.find_element(By.ID, "file-a").send_keys(str(photo("obama", "obama.jpg")))
        browser.find_element(By.ID, "file-b").send_keys(str(photo("obama", "obama1.jpg")))
        assert "similarity" in _text(browser, "verify-result", "Same person")
        for figure in ("photo-a", "photo-b"):
            boxes = _boxes(browser, figure)
            img = browser.find_element(By.CSS_SELECTOR, f"#{figure} img").rect
            assert len(boxes) == 1 and boxes[0]["width"] > 10 and boxes[0]["height"] > 10
            # The box lies on the picture.
            assert img["x"] <= boxes[0]["x"] and boxes[0]["x"] + boxes[0]["width"] <= img["x"] + img["width"] + 1
        # Another person in B: "Different people".
        browser.find_element(By.ID, "file-b").send_keys(str(photo("biden", "biden.jpg")))
        _text(browser, "verify-result", "Different people")
        assert len(_boxes(browser, "photo-b")) == 1

        # Enrol two people through the form (with the API key), then search a photo the gallery never saw.
        for name, files in (("obama", ["obama.jpg", "obama1.jpg"]), ("biden", ["biden.jpg"])):
            browser.find_element(By.ID, "enroll-name").clear()
            browser.find_element(By.ID, "enroll-name").send_keys(name)
            browser.find_element(By.ID, "enroll-files").send_keys("\n".join(str(photo(name, f)) for f in files))
            browser.find_element(By.ID, "api-key").clear()
            browser.find_element(By.ID, "api-key").send_keys(API_KEY)
            browser.find_element(By.ID, "enroll-button").click()
            assert f"{len(files)} face" in _text(browser, "enroll-result", f"Enrolled {name}")
        WebDriverWait(browser, WAIT_S).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery-list li")) == 2)

        browser.find_element(By.ID, "file-search").send_keys(str(photo("obama", "obama3.jpg")))
        assert _text(browser, "search-result", "Best match: obama")
        matches = browser.find_elements(By.CSS_SELECTOR, "#matches .match")
        assert [m.find_element(By.CLASS_NAME, "identity").text for m in matches] == ["obama", "biden"]
        assert len(_boxes(browser, "photo-search")) == 1
        # The match's picture loaded (a decoded image has a width).
        WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(
            "const i = document.querySelector('#matches .match img'); return i.complete && i.naturalWidth > 0;"))

        # Dragged and dropped rather than chosen: the drop zone takes the file the same way.
        dropped = photo("obama", "obama2.jpg")
        browser.execute_script("""
            const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], arguments[1], { type: "image/jpeg" }));
            document.getElementById("drop-search").dispatchEvent(
                new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        """, base64.b64encode(dropped.read_bytes()).decode(), dropped.name)
        # Read in one script: the page replaces the preview <img> with the result's, and an element found
        # before the swap and read after it is stale (the test failed so once in CI).
        WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(
            "const i = document.querySelector('#photo-search img'); return i ? i.alt : null;") == dropped.name)
        _text(browser, "search-result", "Best match: obama")

        # Someone never enrolled: "Unknown".
        browser.find_element(By.ID, "file-search").send_keys(str(photo("carell", "carell.jpg")))
        _text(browser, "search-result", "Unknown")

        # Without the key the page shows the server's refusal.
        browser.find_element(By.ID, "api-key").clear()
        browser.find_element(By.ID, "enroll-name").clear()
        browser.find_element(By.ID, "enroll-name").send_keys("mallory")
        browser.find_element(By.ID, "enroll-files").send_keys(str(photo("carell", "carell.jpg")))
        browser.find_element(By.ID, "enroll-button").click()
        WebDriverWait(browser, WAIT_S).until(
            lambda d: "API key" in d.find_element(By.ID, "enroll-result").text)
    assert service.gallery.identities() == ["biden", "obama"]
