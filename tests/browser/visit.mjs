// Opens one URL in headless Chromium (Debian's, through playwright-core), follows every redirect as a person's
// browser would, and prints what the page ended as, as one line of JSON on stdout:
//   {"url", "status", "title", "lang", "viewport", "h1", "text", "logo": {"src", "alt"} | null, "reference"}
// Nothing off loopback is fetched (a tenant's logo on the web is refused), so the walk needs no network.
//
// Usage: node visit.mjs URL      (CHROMIUM overrides the browser binary, default /usr/bin/chromium)
import { chromium } from 'playwright-core';

const [url] = process.argv.slice(2);
if (!url) {
    console.error('usage: node visit.mjs URL');
    process.exit(2);
}
const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
    const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
    const page = await context.newPage();
    await page.route('**/*', route => (route.request().url().startsWith('http://127.0.0.1') ? route.continue() : route.abort()));
    const response = await page.goto(url, { waitUntil: 'load', timeout: 20000 });
    const result = await page.evaluate(() => {
        const logo = document.querySelector('img.logo');
        return {
            url: location.href,
            title: document.title,
            lang: document.documentElement.lang,
            viewport: document.querySelector('meta[name=viewport]')?.content ?? null,
            h1: document.querySelector('h1')?.innerText ?? null,
            text: document.body.innerText,
            logo: logo ? { src: logo.getAttribute('src'), alt: logo.alt } : null,
            reference: document.querySelector('.reference code')?.innerText ?? null,
            overflows: document.documentElement.scrollWidth > window.innerWidth,
        };
    });
    result.status = response ? response.status() : null;
    console.log(JSON.stringify(result));
} finally {
    await browser.close();
}
