// Small progressive enhancements; every page works without them.
(function () {
  "use strict";

  // Fail If No Peer Cert and CRL checking only make sense with TLS Verify on (the server checks this too).
  function syncVerify() {
    var verify = document.getElementById("verify");
    if (!verify || verify.disabled) return;
    ["fail_if_no_peer_cert", "enable_crl_check"].forEach(function (name) {
      var box = document.getElementById(name);
      if (!box) return;
      box.disabled = !verify.checked;
      if (!verify.checked) box.checked = false;
      var field = document.getElementById("field-" + name);
      if (field) field.classList.toggle("inactive", !verify.checked);
    });
  }

  // The OCSP fields only matter with stapling on.
  function syncOcsp() {
    var ocsp = document.getElementById("enable_ocsp_stapling");
    if (!ocsp) return;
    ["ocsp_responder_url", "ocsp_issuer_pem", "ocsp_refresh_interval"].forEach(function (name) {
      var field = document.getElementById("field-" + name);
      if (field) field.classList.toggle("inactive", !ocsp.checked);
    });
  }

  // Live pages refresh themselves unless someone is typing.
  function autoRefresh() {
    var live = document.querySelector("[data-refresh]");
    if (!live) return;
    var seconds = parseInt(live.getAttribute("data-refresh"), 10) || 5;
    setInterval(function () {
      var active = document.activeElement;
      if (active && /INPUT|TEXTAREA|SELECT/.test(active.tagName)) return;
      if (document.visibilityState === "visible") window.location.reload();
    }, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var verify = document.getElementById("verify");
    if (verify) verify.addEventListener("change", syncVerify);
    var ocsp = document.getElementById("enable_ocsp_stapling");
    if (ocsp) ocsp.addEventListener("change", syncOcsp);
    syncVerify();
    syncOcsp();
    autoRefresh();
  });
})();
