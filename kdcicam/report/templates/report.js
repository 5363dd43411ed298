(function () {
  // Protocol switch: show the panes of one evaluation protocol, hide the other's.
  var body = document.body;
  var buttons = Array.prototype.slice.call(document.querySelectorAll("button[data-show]"));
  var known = buttons.map(function (b) { return b.getAttribute("data-show"); });
  function show(protocol) {
    document.querySelectorAll("[data-protocol]").forEach(function (el) {
      el.hidden = el.getAttribute("data-protocol") !== protocol;
    });
    buttons.forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-show") === protocol));
    });
    body.setAttribute("data-active-protocol", protocol);
  }
  buttons.forEach(function (b) {
    b.addEventListener("click", function () {
      show(b.getAttribute("data-show"));
      history.replaceState(null, "", "#protocol=" + b.getAttribute("data-show"));
    });
  });
  var asked = /protocol=(\w+)/.exec(location.hash);
  if (asked && known.indexOf(asked[1]) >= 0) {
    show(asked[1]);
  } else if (known.length) {
    show(known[0]);
  }
  body.setAttribute("data-report-js", "ready");
})();
