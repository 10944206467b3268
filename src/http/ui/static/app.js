// tokenwarden console: confirmations, live overview, countdowns.
// Plain script, no framework; served from /ui/static/app.js under a
// Content-Security-Policy that forbids inline script.
"use strict";

(function () {
  // Rows are fetched again 3 s after the last answer came, or later when
  // answers are slow (a filter that matches few of very many rows reads
  // them all): the wait is at least 5 times the last fetch, so one open
  // page never keeps the server busy more than a sixth of the time.
  var REFRESH_MS = 3000;
  var SLOWDOWN = 5;

  function span(ms) {
    var s = Math.floor(Math.abs(ms) / 1000);
    var d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24,
        m = Math.floor(s / 60) % 60, sec = s % 60;
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + m + "m";
    if (m > 0) return m + "m " + sec + "s";
    return sec + "s";
  }

  function countdown(atMs) {
    var left = atMs - Date.now();
    return left > 0 ? "in " + span(left) : "expired " + span(left) + " ago";
  }

  // Expiry cells count down every second between server refreshes.
  function tick() {
    var cells = document.querySelectorAll("[data-expires-ms]");
    for (var i = 0; i < cells.length; i++) {
      var ms = parseInt(cells[i].getAttribute("data-expires-ms"), 10);
      if (!isNaN(ms)) {
        var t = cells[i].querySelector("time");
        if (t) t.textContent = countdown(ms);
      }
    }
  }

  // Every action asks first.
  function confirmActions() {
    document.addEventListener("submit", function (ev) {
      var form = ev.target;
      if (!form.classList || !form.classList.contains("action")) return;
      var text = form.getAttribute("data-confirm") || "Are you sure?";
      if (!window.confirm(text)) ev.preventDefault();
    });
  }

  function filterQuery() {
    var form = document.getElementById("filters");
    var parts = [];
    if (form) {
      var selects = form.querySelectorAll("select");
      for (var i = 0; i < selects.length; i++) {
        if (selects[i].value) {
          parts.push(encodeURIComponent(selects[i].name) + "=" + encodeURIComponent(selects[i].value));
        }
      }
    }
    var after = new URLSearchParams(window.location.search).get("after");
    if (after) parts.push("after=" + encodeURIComponent(after));
    return parts.join("&");
  }

  var inFlight = false;
  var again = false;
  var timer = null;

  function schedule(lastMs) {
    if (timer !== null) window.clearTimeout(timer);
    timer = window.setTimeout(refreshRows, Math.max(REFRESH_MS, SLOWDOWN * lastMs));
  }

  function refreshRows() {
    var tbody = document.getElementById("credential-rows");
    if (!tbody) return;
    if (inFlight) {
      // Filters changed meanwhile: fetch again as soon as this one ends.
      again = true;
      return;
    }
    inFlight = true;
    again = false;
    var started = Date.now();
    var q = filterQuery();
    fetch("/ui/overview" + (q ? "?" + q : ""), { credentials: "same-origin", cache: "no-store" })
      .then(function (resp) {
        if (resp.status === 401) {
          window.location.assign("/ui/login");
          return null;
        }
        return resp.ok ? resp.text() : null;
      })
      .then(function (html) {
        if (html === null || html === undefined) return;
        // Rows of filters no longer chosen are not shown.
        if (q !== filterQuery()) {
          again = true;
          return;
        }
        var t = document.createElement("template");
        t.innerHTML = "<table>" + html + "</table>";
        var fresh = t.content.querySelector("#credential-rows");
        var old = document.getElementById("credential-rows");
        if (fresh && old) {
          old.replaceWith(fresh);
          document.body.setAttribute("data-refreshed-at", String(Date.now()));
          tick();
        }
      })
      .catch(function () { /* the next round tries again */ })
      .then(function () {
        inFlight = false;
        if (again) refreshRows();
        else schedule(Date.now() - started);
      });
  }

  function liveFilters() {
    var form = document.getElementById("filters");
    if (!form) return;
    form.addEventListener("change", function () {
      var params = new URLSearchParams(window.location.search);
      params.delete("after");
      var selects = form.querySelectorAll("select");
      for (var i = 0; i < selects.length; i++) {
        if (selects[i].value) params.set(selects[i].name, selects[i].value);
        else params.delete(selects[i].name);
      }
      var qs = params.toString();
      window.history.replaceState(null, "", "/ui" + (qs ? "?" + qs : ""));
      refreshRows();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    confirmActions();
    liveFilters();
    tick();
    window.setInterval(tick, 1000);
    if (document.getElementById("credential-rows")) {
      schedule(0);
    }
  });
})();
