//go:build race

package restore

// raceEnabled: the race detector is on (its tests are slower by 5-10×).
const raceEnabled = true
