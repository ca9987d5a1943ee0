// auth.js — who is signed in: the top bar's account control, the sign-in form and sign-out (GET /api/auth/me).

import { api, setCsrfToken } from "./api.js";
import { $, announce, h } from "./dom.js";

const CREATE_ROLES = new Set(["creator", "admin"]);

export class Account {
  /** @param {{onChange: (account: Account) => void}} hooks called when the user, role or access (safe mode too) changes */
  constructor(hooks) {
    this.hooks = hooks;
    this.me = null; // the last answer of /api/auth/me (null until known, or when it failed)
    this.pending = null;
    this.root = $("#account");
    this.panel = $("#signin-panel");
    this.form = $("#signin-form");
    this.error = $("#signin-error");

    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.signIn();
    });
    this.panel.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !this.panel.hidden) {
        event.preventDefault();
        this.closePanel({ focus: true });
      }
    });
    document.addEventListener("click", (event) => {
      if (!this.panel.hidden && !this.root.contains(event.target) && !this.panel.contains(event.target)) this.closePanel();
    });
    // A 401 elsewhere: the session may have ended, or the instance may be private.
    window.addEventListener("promptdex:unauthorized", () => this.refresh());
  }

  get user() {
    return this.me && this.me.user;
  }

  get anonymous() {
    return this.me ? this.me.anonymous : "read";
  }

  /** The safe-mode levels this caller may use and its default ({default, levels}); null when not known. */
  get safe() {
    return (this.me && this.me.safe) || null;
  }

  /** Nothing can be read without signing in (private instance, nobody signed in). */
  get mustSignIn() {
    return !!this.me && !this.user && this.me.anonymous === "none";
  }

  /** Whether the caller may queue Reproduce / Variations jobs. */
  get canCreate() {
    if (this.user) return CREATE_ROLES.has(this.user.role);
    return this.anonymous === "create";
  }

  /** GET /api/auth/me again (concurrent calls share one request); calls onChange when the answer differs. */
  refresh() {
    if (!this.pending) {
      this.pending = api.me().then(
        (me) => this.set(me),
        () => {}, // unreachable or rate-limited: keep what we knew
      ).finally(() => {
        this.pending = null;
      });
    }
    return this.pending;
  }

  set(me) {
    const key = (value) => JSON.stringify(value ? [value.user, value.anonymous, value.safe ?? null] : null);
    const changed = key(me) !== key(this.me);
    this.me = me;
    setCsrfToken(me && me.csrf_token);
    if (!changed) return; // re-rendering would take the focus off the account buttons
    this.render();
    this.hooks.onChange(this);
  }

  render() {
    if (!this.me) {
      this.root.replaceChildren(); // an API without accounts (or none reachable): no control
      return;
    }
    const user = this.user;
    if (user) {
      this.closePanel();
      this.root.replaceChildren(
        h("span", { class: "account-user", id: "account-user" },
          h("span", { class: "account-name", id: "account-name" }, user.name),
          h("span", { class: "account-role pill", id: "account-role" }, user.role)),
        h("button", { class: "chip-button", type: "button", id: "signout", onclick: () => this.signOut() }, "Sign out"),
      );
      return;
    }
    this.root.replaceChildren(
      h("button", {
        class: "chip-button", type: "button", id: "signin-toggle", "aria-expanded": String(!this.panel.hidden),
        "aria-controls": "signin-panel", onclick: () => this.toggle(),
      }, "Sign in"),
    );
  }

  toggle() {
    if (this.form.isConnected && this.form.parentElement !== this.panel) {
      $("#signin-name").focus(); // the form is on the page already (the private-instance state)
    } else if (this.panel.hidden) {
      this.openPanel();
    } else {
      this.closePanel();
    }
  }

  /** Show the form under the top bar's button. */
  openPanel() {
    if (this.form.parentElement !== this.panel) this.panel.append(this.form);
    this.panel.hidden = false;
    $("#signin-toggle")?.setAttribute("aria-expanded", "true");
    $("#signin-name").focus();
  }

  closePanel({ focus = false } = {}) {
    if (this.panel.hidden) return;
    this.panel.hidden = true;
    const toggle = $("#signin-toggle");
    toggle?.setAttribute("aria-expanded", "false");
    if (focus) toggle?.focus();
  }

  /** Put the form into `box` (the private-instance state), out of the top bar's panel. */
  embedForm(box) {
    this.closePanel();
    box.append(this.form);
    this.showError("");
  }

  showError(message) {
    this.error.hidden = !message;
    this.error.textContent = message;
    for (const field of this.form.querySelectorAll("input")) {
      if (message) field.setAttribute("aria-invalid", "true");
      else field.removeAttribute("aria-invalid");
    }
  }

  async signIn() {
    const name = $("#signin-name").value.trim();
    const password = $("#signin-password").value;
    const submit = $("#signin-submit");
    submit.disabled = true;
    submit.setAttribute("aria-busy", "true");
    this.showError("");
    try {
      const me = await api.login(name, password);
      $("#signin-password").value = "";
      this.panel.append(this.form); // back to its place for the next sign-in
      this.set(me);
      announce(`Signed in as ${me.user.name} (${me.user.role})`);
      $("#signout")?.focus();
    } catch (error) {
      this.showError(error.detail || error.message);
      $("#signin-password").select();
    } finally {
      submit.disabled = false;
      submit.removeAttribute("aria-busy");
    }
  }

  async signOut() {
    const button = $("#signout");
    if (button) button.disabled = true;
    try {
      await api.logout();
    } catch (error) {
      announce(`Could not sign out: ${error.detail || error.message}`);
      if (button) button.disabled = false;
      return;
    }
    await this.refresh();
    announce("Signed out");
    $("#signin-toggle")?.focus();
  }
}
