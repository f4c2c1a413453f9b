//! Conference mixer: every party hears everyone else (an N-1 mix, so no
//! one hears their own echo), saturating at full scale; muted parties are
//! not heard; join and leave prompts are played to the room through a
//! [`Player`].
//!
//! Per tick the caller pushes each party's decoded frame (from its jitter
//! buffer) and calls [`ConferenceMixer::mix`]. The sum of all inputs is
//! computed once and each party's own contribution subtracted, so a tick
//! costs O(N) rather than O(N²).

use crate::player::{PlayOptions, Player, PlayerState, Prompt};
use crate::{Frame, FRAME_SAMPLES, SILENT_FRAME};
use std::collections::VecDeque;
use thiserror::Error;

pub type PartyId = u64;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MixerError {
    #[error("party {0} is already in the conference")]
    AlreadyJoined(PartyId),
    #[error("party {0} is not in the conference")]
    UnknownParty(PartyId),
}

/// Announcements played to the whole room.
#[derive(Debug, Clone, Default)]
pub struct ConferencePrompts {
    pub join: Option<Prompt>,
    pub leave: Option<Prompt>,
}

#[derive(Debug)]
struct Party {
    id: PartyId,
    muted: bool,
    input: Option<Frame>,
}

#[derive(Debug, Default)]
pub struct ConferenceMixer {
    parties: Vec<Party>,
    prompts: ConferencePrompts,
    announcer: Player,
    queued_announcements: VecDeque<Prompt>,
}

impl ConferenceMixer {
    pub fn new(prompts: ConferencePrompts) -> Self {
        ConferenceMixer {
            prompts,
            ..Self::default()
        }
    }

    pub fn party_count(&self) -> usize {
        self.parties.len()
    }

    fn party_mut(&mut self, id: PartyId) -> Result<&mut Party, MixerError> {
        self.parties
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or(MixerError::UnknownParty(id))
    }

    pub fn join(&mut self, id: PartyId) -> Result<(), MixerError> {
        if self.parties.iter().any(|p| p.id == id) {
            return Err(MixerError::AlreadyJoined(id));
        }
        self.parties.push(Party {
            id,
            muted: false,
            input: None,
        });
        if let Some(prompt) = self.prompts.join.clone() {
            self.queued_announcements.push_back(prompt);
        }
        Ok(())
    }

    pub fn leave(&mut self, id: PartyId) -> Result<(), MixerError> {
        let index = self
            .parties
            .iter()
            .position(|p| p.id == id)
            .ok_or(MixerError::UnknownParty(id))?;
        self.parties.remove(index);
        if let Some(prompt) = self.prompts.leave.clone() {
            self.queued_announcements.push_back(prompt);
        }
        Ok(())
    }

    pub fn set_muted(&mut self, id: PartyId, muted: bool) -> Result<(), MixerError> {
        self.party_mut(id)?.muted = muted;
        Ok(())
    }

    /// This tick's audio from a party; a party that pushes nothing this
    /// tick contributes silence.
    pub fn push_frame(&mut self, id: PartyId, frame: &Frame) -> Result<(), MixerError> {
        self.party_mut(id)?.input = Some(*frame);
        Ok(())
    }

    /// Mixes one tick into `outputs` (cleared first): one frame per party,
    /// in join order. Inputs are consumed.
    pub fn mix(&mut self, outputs: &mut Vec<(PartyId, Frame)>) {
        outputs.clear();
        if self.announcer.state() == PlayerState::Idle {
            if let Some(prompt) = self.queued_announcements.pop_front() {
                self.announcer.play(vec![prompt], PlayOptions::default());
            }
        }
        let announcement = self.announcer.next_frame().unwrap_or(SILENT_FRAME);
        let mut total = [0i32; FRAME_SAMPLES];
        for (sum, sample) in total.iter_mut().zip(announcement) {
            *sum = i32::from(sample);
        }
        for party in self.parties.iter().filter(|p| !p.muted) {
            if let Some(input) = &party.input {
                for (sum, sample) in total.iter_mut().zip(input) {
                    *sum += i32::from(*sample);
                }
            }
        }
        for party in &mut self.parties {
            let own = party.input.take().filter(|_| !party.muted);
            let mut frame = SILENT_FRAME;
            for (i, (out, sum)) in frame.iter_mut().zip(total).enumerate() {
                let own_sample = own
                    .as_ref()
                    .and_then(|f| f.get(i))
                    .map_or(0, |s| i32::from(*s));
                *out = (sum - own_sample).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
            }
            outputs.push((party.id, frame));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtmf::goertzel_power;

    fn tone(frequency: f32, tick: usize) -> Frame {
        let mut frame = SILENT_FRAME;
        for (i, sample) in frame.iter_mut().enumerate() {
            let t = (tick * FRAME_SAMPLES + i) as f32 / 8000.0;
            *sample = (8000.0 * (2.0 * std::f32::consts::PI * frequency * t).sin()) as i16;
        }
        frame
    }

    #[test]
    fn each_party_hears_the_others_but_not_itself() {
        let mut mixer = ConferenceMixer::new(ConferencePrompts::default());
        let frequencies = [(1, 400.0), (2, 1000.0), (3, 1700.0)];
        for (id, _) in frequencies {
            mixer.join(id).unwrap();
        }
        let mut heard: Vec<Vec<i16>> = vec![Vec::new(); 3];
        let mut outputs = Vec::new();
        for tick in 0..10 {
            for (id, f) in frequencies {
                mixer.push_frame(id, &tone(f, tick)).unwrap();
            }
            mixer.mix(&mut outputs);
            for (slot, (_, frame)) in heard.iter_mut().zip(&outputs) {
                slot.extend_from_slice(frame);
            }
        }
        for (listener, audio) in heard.iter().enumerate() {
            for (speaker, (_, f)) in frequencies.iter().enumerate() {
                let power = goertzel_power(audio, *f, 8000.0);
                if speaker == listener {
                    assert!(power < 1.0e3, "party {listener} hears itself: {power}");
                } else {
                    // A tone of amplitude 8000 has power 3.2e7.
                    assert!(
                        power > 2.5e7,
                        "party {listener} misses party {speaker}: {power}"
                    );
                }
            }
        }
    }

    #[test]
    fn mix_saturates_instead_of_wrapping() {
        let mut mixer = ConferenceMixer::new(ConferencePrompts::default());
        for id in 1..=3 {
            mixer.join(id).unwrap();
        }
        mixer.push_frame(1, &[30_000; FRAME_SAMPLES]).unwrap();
        mixer.push_frame(2, &[30_000; FRAME_SAMPLES]).unwrap();
        mixer.push_frame(3, &[-30_000; FRAME_SAMPLES]).unwrap();
        let mut outputs = Vec::new();
        mixer.mix(&mut outputs);
        assert_eq!(outputs[0], (1, [0; FRAME_SAMPLES]));
        assert_eq!(outputs[2], (3, [i16::MAX; FRAME_SAMPLES]));
    }

    #[test]
    fn muted_parties_hear_but_are_not_heard() {
        let mut mixer = ConferenceMixer::new(ConferencePrompts::default());
        mixer.join(1).unwrap();
        mixer.join(2).unwrap();
        mixer.set_muted(1, true).unwrap();
        mixer.push_frame(1, &[100; FRAME_SAMPLES]).unwrap();
        mixer.push_frame(2, &[200; FRAME_SAMPLES]).unwrap();
        let mut outputs = Vec::new();
        mixer.mix(&mut outputs);
        assert_eq!(
            outputs,
            vec![(1, [200; FRAME_SAMPLES]), (2, [0; FRAME_SAMPLES])]
        );
        // Inputs are per tick: nothing pushed means silence.
        mixer.mix(&mut outputs);
        assert_eq!(
            outputs,
            vec![(1, [0; FRAME_SAMPLES]), (2, [0; FRAME_SAMPLES])]
        );
        assert_eq!(mixer.set_muted(9, true), Err(MixerError::UnknownParty(9)));
        assert_eq!(
            mixer.push_frame(9, &SILENT_FRAME),
            Err(MixerError::UnknownParty(9))
        );
    }

    #[test]
    fn join_and_leave_prompts_are_played_to_the_room_in_turn() {
        let join: Prompt = vec![1000i16; FRAME_SAMPLES].into();
        let leave: Prompt = vec![-500i16; FRAME_SAMPLES * 2].into();
        let mut mixer = ConferenceMixer::new(ConferencePrompts {
            join: Some(join),
            leave: Some(leave),
        });
        mixer.join(1).unwrap();
        mixer.join(2).unwrap();
        assert_eq!(mixer.join(2), Err(MixerError::AlreadyJoined(2)));
        let mut outputs = Vec::new();
        let mut heard_by_1 = Vec::new();
        for _ in 0..2 {
            mixer.mix(&mut outputs);
            heard_by_1.push(outputs[0].1[0]);
        }
        mixer.leave(2).unwrap();
        assert_eq!(mixer.leave(2), Err(MixerError::UnknownParty(2)));
        for _ in 0..3 {
            mixer.mix(&mut outputs);
            assert_eq!(outputs.len(), 1);
            heard_by_1.push(outputs[0].1[0]);
        }
        assert_eq!(heard_by_1, vec![1000, 1000, -500, -500, 0]);
        assert_eq!(mixer.party_count(), 1);
    }
}
