// The customer screen: polls /state every 200 ms and shows it; sends the shopper's actions
// with the page's token. No framework, no build step.
"use strict";

(function () {
  const POLL_MS = 200;
  const body = document.body;
  const first = body.dataset.first;
  const second = body.dataset.second;
  const token = document.querySelector('meta[name="facepay-token"]').content;
  const $ = (id) => document.getElementById(id);

  let noticeShown = null; // the notice text on screen: replaced only when it changes
  let previewSeq = 0;
  let previewLoading = false;
  let lastState = null;
  let lastTries = null;
  // The step-up's keypad: what it takes (from the state's "keypad") and the digits typed.
  let keypad = { ask: "phone_last4", min_digits: 4, max_digits: 4 };
  let typed = "";

  function setText(id, value) {
    const node = $(id);
    const text = value == null ? "" : String(value);
    if (node.textContent !== text) node.textContent = text;
  }

  function showNotice(notice) {
    const text = notice ? notice.text : "";
    if (text === noticeShown) return;
    noticeShown = text;
    const article = $("notice");
    article.replaceChildren();
    article.lang = notice ? notice.locale : first;
    const paragraphs = text.split(/\n\s*\n/).map((p) => p.replace(/\s*\n\s*/g, " ").trim());
    paragraphs.filter((p) => p).forEach((p, i) => {
      const node = document.createElement(i === 0 ? "h2" : "p");
      node.textContent = p;
      article.appendChild(node);
    });
    article.scrollTop = 0;
  }

  function showPreview(state) {
    const img = $("preview");
    if (!state.frame) {
      if (img.getAttribute("src")) img.removeAttribute("src");
      previewSeq = 0;
      return;
    }
    if (state.frame.seq === previewSeq || previewLoading) return;
    previewLoading = true;
    previewSeq = state.frame.seq;
    img.src = "/preview.jpg?seq=" + previewSeq;
  }
  $("preview").addEventListener("load", () => { previewLoading = false; });
  $("preview").addEventListener("error", () => { previewLoading = false; });

  // A full number is shown in groups from the right: "1 514 555 0142"; four digits as typed.
  function grouped(digits) {
    if (keypad.ask !== "phone" || digits.length <= 4) return digits;
    const groups = [digits.slice(-4)];
    let rest = digits.slice(0, -4);
    while (rest.length > 3) {
      groups.unshift(rest.slice(-3));
      rest = rest.slice(0, -3);
    }
    if (rest) groups.unshift(rest);
    return groups.join(" ");
  }

  function setTyped(text) {
    typed = text.replace(/\D/g, "").slice(0, keypad.max_digits);
    const input = $("digits");
    const shown = grouped(typed);
    if (input.value !== shown) input.value = shown;
    $("digits-send").disabled = typed.length < keypad.min_digits;
  }

  function render(state) {
    const entering = state.state !== lastState;
    lastState = state.state;
    body.dataset.state = state.state;
    body.dataset.session = state.session ? "true" : "false";
    body.dataset.outcome = state.result ? state.result.outcome : "";
    body.dataset.ok = state.result ? String(state.result.ok) : "";

    setText("prompt-first", state.prompt.text[first]);
    setText("prompt-second", state.prompt.text[second]);

    $("amount").hidden = !state.amount;
    setText("amount-value", state.amount ? state.amount.text[first] : "");

    $("problem").hidden = !state.problem;
    setText("problem-first", state.problem ? state.problem.text[first] : "");
    setText("problem-second", state.problem ? state.problem.text[second] : "");

    showNotice(state.notice);
    showPreview(state);
    setText("tries-left", state.tries_left == null ? "" : state.tries_left);
    $("tries").hidden = state.tries_left == null;
    body.dataset.ask = state.keypad ? state.keypad.ask : "";
    if (state.keypad) keypad = state.keypad;

    const result = state.result;
    setText("result-reason", result && result.reason ? result.reason[first] : "");
    setText("result-label", result && result.label ? result.label : "");
    setText("result-balance", result && result.balance ? result.balance.text[first] : "");
    $("result-balance-line").hidden = !(result && result.balance);
    const ways = state.other_ways.map((way) => way.text[first]).join(" · ");
    setText("ways", ways);
    setText("other-way-list", ways);
    $("result-ways").hidden = !result || result.ok;

    // A new step-up, or the same one asked again after a wrong answer: start from nothing.
    const askedAgain = state.state === "step_up" && state.tries_left !== lastTries;
    lastTries = state.tries_left;
    if (entering || askedAgain) {
      if (entering) hideError();
      if (state.state === "consent") $("name").value = "";
      if (state.state === "step_up") { setTyped(""); $("digits").focus(); }
    }
  }

  function showError(problem) {
    const words = problem && problem.text ? problem.text : null;
    setText("error", words ? words[first] + " / " + words[second] : "…");
    $("error").hidden = false;
  }

  function hideError() { $("error").hidden = true; }

  async function act(path, payload) {
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Facepay-Token": token },
        body: JSON.stringify(payload || {}),
        cache: "no-store",
      });
    } catch (error) {
      showError(null);
      return;
    }
    const answer = await response.json().catch(() => null);
    if (!response.ok) { showError(answer); return; }
    hideError();
    if (answer && answer.state) render(answer.state);
  }

  $("agree-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("/actions/agree", { name: $("name").value });
  });
  $("digits-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (typed.length < keypad.min_digits) return;
    act("/actions/digits", { digits: typed });
  });
  $("digits").addEventListener("input", () => setTyped($("digits").value));
  $("keypad").addEventListener("click", (event) => {
    const key = event.target.closest("button.key");
    if (!key) return;
    setTyped(key.dataset.key === "delete" ? typed.slice(0, -1) : typed + key.dataset.key);
  });
  $("other-way").addEventListener("click", () => act("/actions/other-way"));
  $("cancel").addEventListener("click", () => act("/actions/cancel"));

  async function poll() {
    try {
      const response = await fetch("/state", { cache: "no-store" });
      if (response.ok) render(await response.json());
    } catch (error) {
      // the kiosk process is restarting: keep the last screen and try again
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }
  poll();
})();
