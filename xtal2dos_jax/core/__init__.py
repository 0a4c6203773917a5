"""Stage 0, what every stage uses: one-line input errors, atomic file writes, the
package's shipped-file paths. Imports nothing of the package."""
