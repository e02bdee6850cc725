// Loads dfdet serve's page in headless Chromium, uploads each file given through the file
// picker as a user would, and prints what the page then shows (read from the DOM) as JSON.
// Usage: node page.mjs URL SCREENSHOT.png FILE...
import puppeteer from "puppeteer-core";

const [url, screenshot, ...files] = process.argv.slice(2);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  headless: true,
  protocolTimeout: 600000,
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 960, height: 1000 });
  await page.goto(url, { waitUntil: "load" });
  const shown = [];
  for (const file of files) {
    const input = await page.$("#file");
    await input.uploadFile(file);
    // Done when the verdict is up, or the page says why not.
    const done = () => !document.getElementById("result").hidden || /^(Not scored|The server)/.test(document.getElementById("status").textContent);
    await page.waitForFunction(done, { timeout: 300000, polling: 200 });
    shown.push(await page.evaluate(async () => {
      // Wait (boundedly) for the annotated media and the face crops to load or fail.
      const settle = (el) => new Promise((done) => {
        const ready = el.tagName === "VIDEO" ? el.readyState >= 2 : el.complete;
        if (ready) return done();
        el.addEventListener(el.tagName === "VIDEO" ? "loadeddata" : "load", done, { once: true });
        el.addEventListener("error", done, { once: true });
        setTimeout(done, 20000);
      });
      const media = [...document.querySelectorAll("#media img, #media video")];
      const crops = [...document.querySelectorAll("#crops img")];
      await Promise.all(media.concat(crops).map(settle));
      const size = (el) => el.tagName === "VIDEO" ? [el.videoWidth, el.videoHeight] : [el.naturalWidth, el.naturalHeight];
      return {
        status: document.getElementById("status").textContent,
        score: document.getElementById("score").textContent,
        label: document.getElementById("label").textContent,
        rows: [...document.querySelectorAll("#frames tr")].map((tr) => [...tr.cells].map((td) => td.textContent)),
        chart: document.querySelectorAll("#chart circle").length,
        media: media.map((el) => ({ tag: el.tagName.toLowerCase(), size: size(el) })),
        crops: crops.map((el) => ({ size: size(el), caption: el.nextElementSibling.textContent })),
      };
    }));
  }
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify(shown));
} finally {
  await browser.close();
}
