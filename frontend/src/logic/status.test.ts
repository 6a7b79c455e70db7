import { describe, expect, it } from "vitest";
import { isWaitStep, statusLook } from "./status";

describe("statusLook", () => {
  it("gives seed 002's glyphs: check, X, spinner", () => {
    expect(statusLook("completed").glyph).toBe("check");
    expect(statusLook("failed").glyph).toBe("cross");
    expect(statusLook("running").glyph).toBe("spinner");
    expect(statusLook("retrying").glyph).toBe("spinner");
  });

  it("shows a running sleep or wait as a clock, saying what it does", () => {
    expect(statusLook("running", "sleep")).toMatchObject({ glyph: "clock", label: "sleeping" });
    expect(statusLook("running", "wait_for_event")).toMatchObject({ glyph: "clock", label: "waiting" });
    expect(statusLook("scheduled").glyph).toBe("clock");
  });

  it("tells missing, skipped, stuck and interrupted apart", () => {
    const glyphs = ["missing", "skipped", "stuck", "interrupted"].map((s) => statusLook(s).glyph);
    expect(new Set(glyphs).size).toBe(4);
  });

  it("shows an unknown status by its own name", () => {
    expect(statusLook("paused")).toMatchObject({ glyph: "dot", label: "paused" });
  });
});

describe("isWaitStep", () => {
  it("knows sleeps and waits by kind or by status", () => {
    expect(isWaitStep("sleep_until", "completed")).toBe(true);
    expect(isWaitStep("run", "waiting")).toBe(true);
    expect(isWaitStep("run", "running")).toBe(false);
  });
});
