package agent

// PendingPrewritePeaks returns the highest bytes of pending prewrites the
// agent counted against its prewrite budget, and held over it (the region
// kept over the budget).
func PendingPrewritePeaks(a *Agent) (counted, overBudget int64) {
	return a.pending.peak.Load(), a.pending.exemptPeak.Load()
}
