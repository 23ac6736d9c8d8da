// Fleet dashboard: live updates by server-sent events. Pages work without this file; it only
// keeps what is on screen current. Elements opt in with data attributes:
//   data-live="KEY"          text replaced by the summary event's live[KEY]
//   data-device-state="ID"   state badge of device ID, replaced by the devices event
(function () {
  "use strict";
  if (!window.EventSource) { return; }
  var body = document.body;
  function setText(key, value) {
    var els = document.querySelectorAll('[data-live="' + key + '"]');
    for (var i = 0; i < els.length; i++) { els[i].textContent = value; }
  }
  function showStop(stop) {
    var banner = document.getElementById("stop-banner");
    if (!banner) { return; }
    if (stop) {
      var text = document.getElementById("stop-text");
      if (text) {
        text.textContent = "EMERGENCY STOP: no device receives a new release. Set by " +
          stop.actor + " at " + new Date(stop.at_ms).toISOString().replace("T", " ").slice(0, 19) +
          " UTC: " + stop.reason;
      }
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
  }
  var source = new EventSource("/ui/events");
  // Close the stream when the page goes away (navigation, back-forward cache): browsers allow
  // only a few connections per host, and a stream left open holds one.
  window.addEventListener("pagehide", function () { source.close(); });
  source.addEventListener("open", function () { body.setAttribute("data-live-status", "connected"); });
  source.addEventListener("error", function () { body.setAttribute("data-live-status", "reconnecting"); });
  source.addEventListener("summary", function (e) {
    var d = JSON.parse(e.data);
    Object.keys(d.live).forEach(function (k) { setText(k, d.live[k]); });
    showStop(d.stop);
    body.setAttribute("data-live-status", "connected");
  });
  source.addEventListener("devices", function (e) {
    var d = JSON.parse(e.data);
    Object.keys(d).forEach(function (id) {
      var els = document.querySelectorAll('[data-device-state="' + CSS.escape(id) + '"]');
      for (var i = 0; i < els.length; i++) {
        els[i].textContent = d[id];
        els[i].className = "state state-" + d[id];
      }
    });
  });
})();
