// Pages of a list: the cursors seen so far, so that "Previous page" goes back as "Next page"
// goes on; and a guard that keeps an older, slower answer from drawing over a newer one.

import { h } from "./dom.js";

/** `load(cursor)` draws one page and returns it (or undefined when it was overtaken); an
 * error on a later page goes to `failed`. */
export function pager(load, failed = () => {}) {
  const state = { cursors: [null], at: 0, next: null };
  const previous = h("button", { type: "button", disabled: true }, "Previous page");
  const next = h("button", { type: "button", disabled: true }, "Next page");
  const where = h("span", { class: "muted" });

  async function show() {
    previous.disabled = true;
    next.disabled = true;
    const page = await load(state.cursors[state.at]);
    if (page === undefined) return;
    state.next = page.next || null;
    previous.disabled = state.at === 0;
    next.disabled = !state.next;
    where.textContent = `page ${state.at + 1}`;
    keepFocus(!next.disabled ? next : !previous.disabled ? previous : where);
  }

  next.addEventListener("click", () => {
    state.cursors[state.at + 1] = state.next;
    state.at += 1;
    show().catch(failed);
  });
  previous.addEventListener("click", () => {
    state.at = Math.max(0, state.at - 1);
    show().catch(failed);
  });
  return {
    el: h("div", { class: "pager" }, previous, where, next),
    /** Back to the first page (the filters changed). */
    first() {
      state.cursors = [null];
      state.at = 0;
      return show();
    },
    /** The page shown, read again (after a change). */
    again() {
      return show();
    },
  };
}

/** `fresh(promise)` resolves to its value only if no later call was made meanwhile, else to
 * undefined: the answer to an older filter or page is dropped, and so is its failure. */
export function newest() {
  let last = 0;
  return async (promise) => {
    last += 1;
    const mine = last;
    try {
      const value = await promise;
      return mine === last ? value : undefined;
    } catch (error) {
      if (mine === last) throw error;
      return undefined;
    }
  };
}

/** After a redraw took away the focused element (a row's button, a disabled pager button),
 * put focus on `target` rather than leave keyboard users at the top of the page. */
export function keepFocus(target) {
  if (target && (document.activeElement === document.body || !document.activeElement)) {
    if (!target.hasAttribute("tabindex")) target.tabIndex = -1;
    target.focus({ preventScroll: true });
  }
}
