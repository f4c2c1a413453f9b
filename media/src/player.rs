//! Sans-IO prompt player: one 20 ms frame per tick from a list of prompts,
//! optionally looping (music on hold) and optionally interrupted by DTMF
//! (barge-in). Pair it with [`crate::pacing`] for timing.

use crate::{Frame, SILENT_FRAME};
use std::sync::Arc;

/// Decoded 8 kHz audio, shared between every call that plays it.
pub type Prompt = Arc<[i16]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlayOptions {
    /// A DTMF digit stops the list (IVR menus); off for announcements that
    /// must be heard in full.
    pub barge_in: bool,
    /// Start again from the first prompt at the end (music on hold).
    pub looping: bool,
}

/// Whether the player still has audio to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayerState {
    Playing,
    Idle,
}

#[derive(Debug, Default)]
pub struct Player {
    prompts: Vec<Prompt>,
    options: PlayOptions,
    index: usize,
    offset: usize,
}

impl Player {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces whatever is playing with `prompts`, played in order.
    pub fn play(&mut self, mut prompts: Vec<Prompt>, options: PlayOptions) {
        // Empty prompts would yield silent frames, and an all-empty loop
        // would never end.
        prompts.retain(|p| !p.is_empty());
        self.prompts = prompts;
        self.options = options;
        self.index = 0;
        self.offset = 0;
    }

    pub fn stop(&mut self) {
        self.prompts.clear();
    }

    pub fn state(&self) -> PlayerState {
        if self.index < self.prompts.len() {
            PlayerState::Playing
        } else {
            PlayerState::Idle
        }
    }

    /// A DTMF digit arrived (any digit barges in): stops the list if
    /// barge-in is allowed. Returns whether playback stopped.
    pub fn on_dtmf(&mut self) -> bool {
        if self.options.barge_in && self.state() == PlayerState::Playing {
            self.stop();
            return true;
        }
        false
    }

    /// The next 20 ms of audio, or `None` once the list has ended. The last
    /// frame of a list is padded with silence; consecutive prompts are
    /// joined without a gap.
    pub fn next_frame(&mut self) -> Option<Frame> {
        if self.state() == PlayerState::Idle {
            return None;
        }
        let mut frame = SILENT_FRAME;
        let mut filled = 0;
        while filled < frame.len() {
            let Some(prompt) = self.prompts.get(self.index) else {
                break;
            };
            let available = prompt.get(self.offset..).unwrap_or(&[]);
            let take = available.len().min(frame.len() - filled);
            if let (Some(dst), Some(src)) =
                (frame.get_mut(filled..filled + take), available.get(..take))
            {
                dst.copy_from_slice(src);
            }
            filled += take;
            self.offset += take;
            if self.offset >= prompt.len() {
                self.offset = 0;
                self.index += 1;
                if self.index == self.prompts.len() && self.options.looping {
                    self.index = 0;
                }
            }
        }
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(value: i16, len: usize) -> Prompt {
        vec![value; len].into()
    }

    fn play_all(player: &mut Player) -> Vec<i16> {
        std::iter::from_fn(|| player.next_frame())
            .flatten()
            .collect()
    }

    #[test]
    fn plays_a_list_in_order_without_gaps_then_goes_idle() {
        let mut player = Player::new();
        assert_eq!(player.next_frame(), None);
        player.play(vec![prompt(1, 200), prompt(2, 100)], PlayOptions::default());
        let audio = play_all(&mut player);
        assert_eq!(audio.len(), 320, "two frames, the last padded");
        assert!(audio[..200].iter().all(|s| *s == 1));
        assert!(audio[200..300].iter().all(|s| *s == 2));
        assert!(audio[300..].iter().all(|s| *s == 0));
        assert_eq!(player.state(), PlayerState::Idle);
    }

    #[test]
    fn music_on_hold_loops_until_stopped() {
        let mut player = Player::new();
        player.play(
            vec![prompt(1, 100), prompt(2, 50)],
            PlayOptions {
                looping: true,
                barge_in: false,
            },
        );
        let audio: Vec<i16> = (0..15).flat_map(|_| player.next_frame().unwrap()).collect();
        // 2400 samples = 16 loops of 150.
        for (i, sample) in audio.iter().enumerate() {
            let expected = if i % 150 < 100 { 1 } else { 2 };
            assert_eq!(*sample, expected, "sample {i}");
        }
        assert!(!player.on_dtmf(), "no barge-in on MOH");
        player.stop();
        assert_eq!(player.next_frame(), None);
    }

    #[test]
    fn barge_in_stops_the_list_only_when_allowed() {
        let mut player = Player::new();
        player.play(
            vec![prompt(1, 1600), prompt(2, 1600)],
            PlayOptions {
                barge_in: true,
                looping: false,
            },
        );
        player.next_frame().unwrap();
        assert!(player.on_dtmf());
        assert_eq!(player.next_frame(), None);

        player.play(vec![prompt(1, 1600)], PlayOptions::default());
        assert!(!player.on_dtmf());
        assert_eq!(play_all(&mut player).len(), 1600);
    }

    #[test]
    fn empty_prompts_are_skipped_and_an_empty_loop_does_not_spin() {
        let mut player = Player::new();
        player.play(
            vec![prompt(1, 0), prompt(3, 160), prompt(1, 0)],
            PlayOptions::default(),
        );
        assert_eq!(play_all(&mut player), vec![3; 160]);
        player.play(
            vec![prompt(1, 0)],
            PlayOptions {
                looping: true,
                barge_in: false,
            },
        );
        assert_eq!(player.next_frame(), None);
    }
}
